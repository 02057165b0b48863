// One in-place pass over the sensitivity tensor of a vanilla RNN for ring-sparse RTRL and
// eligibility traces, an XLA FFI custom call for the CPU (see rtrl/native.py).
//
// Per batch element b, with M [n, P] (P = n m, column a m + j is Θ[a, j]) and k ring offsets o_s:
//
//   M_t[i, :] = d_i (Σ_s w[i, s] M_{t-1}[(i + o_s) mod n, :] + I[i, :]) + γ M_{t-1}[i, :]
//   I[i, a m + j] = δ_ia v_j                               (the immediate term)
//   g[:]      = Σ_i coef_i M_{t-1}[i, :]                   (the gradient contraction)
//
// Columns are independent, so M is split in column tiles [c0, c0 + W). Within a tile the rows are
// swept in order (in blocks of 4 on the banded path, see Band), each row's run of W values read
// from M once and overwritten once in the same fused loop (which also takes the contraction); the
// old rows still needed after their own turn are kept in small buffers that stay in cache. So M
// is read once and written once, in long contiguous runs the hardware prefetcher follows (helped
// by software prefetches of the next rows). (Tiles that kept all n rows of a narrow
// column range in a buffer were 1.7× slower: n short strided runs per tile.) Tiles are shared out
// to XLA's intra-op thread pool through an atomic counter; the calling thread works too, and
// waits only for tasks that actually started.

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <typename T>
struct Problem {
  T* M;
  T* g;
  const T* w;
  const T* d;
  const T* v;
  const T* coef;
  const int64_t* offsets;
  int64_t batch, n, m, P, k, lo, hi, tile;  // lo, hi: reach of the offsets below and above
  int banded;  // K of the banded path (offsets -lo .. hi, see Band), 0: the general path
  T decay;
};

constexpr int kRows = 4;         // rows per block of the banded path
constexpr int64_t kSub = 512;     // columns per L1 accumulator (any k)
constexpr int64_t kChunk = 1024;  // columns per prefetch batch (k <= 8)
// Rows ahead of the one first read from memory (i + hi) whose run is prefetched while row i is
// computed: 2 was fastest of 0, 1, 2 (0: 4.4 ms, 2: 2.8 ms per step at n = 256, k = 4).
constexpr int64_t kPrefetchRows = 2;

template <typename T>
void Prefetch(const T* ahead, int64_t from, int64_t to) {
  if (ahead == nullptr) return;
  for (int64_t c = from; c < to; c += 64 / sizeof(T)) __builtin_prefetch(ahead + c, 0, 3);
}

// Row i over W columns, fused: save the old value, add it to the contraction, write the new one
// (self · old + Σ_s a_s src_s, self = γ + d_i w[i, s0] when offset 0 is selected). K is the
// number of other sources when known at compile time (-1: any, k of them). `ahead` is a later
// row's run, prefetched while this one is computed (nullptr: none).
template <typename T, int K>
void Row(T* __restrict row, T* __restrict saved, T* __restrict g, T ci, T self,
         const T* const* src, const T* a, int64_t W, T* __restrict acc, int64_t k,
         const T* ahead) {
  if constexpr (K >= 0) {
    const T* s_[K > 0 ? K : 1];
    T a_[K > 0 ? K : 1];
    for (int s = 0; s < K; ++s) {
      s_[s] = src[s];
      a_[s] = a[s];
    }
    for (int64_t c0 = 0; c0 < W; c0 += kChunk) {
      const int64_t c1 = std::min(W, c0 + kChunk);
      Prefetch(ahead, c0, c1);
      for (int64_t c = c0; c < c1; ++c) {
        const T old = row[c];
        T x = self * old;
        for (int s = 0; s < K; ++s) x += a_[s] * s_[s][c];
        saved[c] = old;
        g[c] += ci * old;
        row[c] = x;
      }
    }
  } else {
    for (int64_t s0 = 0; s0 < W; s0 += kSub) {
      const int64_t len = std::min(kSub, W - s0);
      Prefetch(ahead, s0, s0 + len);
      for (int64_t c = 0; c < len; ++c) {
        const T old = row[s0 + c];
        saved[s0 + c] = old;
        g[s0 + c] += ci * old;
        acc[c] = self * old;
      }
      for (int64_t s = 0; s < k; ++s) {
        const T as = a[s];
        const T* x = src[s] + s0;
        for (int64_t c = 0; c < len; ++c) acc[c] += as * x[c];
      }
      std::copy(acc, acc + len, row + s0);
    }
  }
}

// Tile `index`: batch element b, columns [c0, c0 + W). Rows are swept in order i = 0 .. n-1, each
// read once from M (a contiguous run of W values) and overwritten once; the old rows that are
// still needed after their own turn (i - lo .. i - 1, and rows 0 .. hi - 1 for the wrap at the
// end) are kept in small buffers that stay in cache.
template <typename T>
void RunTile(const Problem<T>& p, int64_t index, T* ring, T* head, T* acc) {
  const int64_t tiles = (p.P + p.tile - 1) / p.tile;
  const int64_t b = index / tiles;
  const int64_t c0 = (index % tiles) * p.tile;
  const int64_t W = std::min(p.tile, p.P - c0);
  const int64_t n = p.n, P = p.P, k = p.k, slots = p.lo + 1;
  T* M = p.M + b * n * P + c0;
  T* g = p.g + b * P + c0;
  const T* coef = p.coef + b * n;
  const T* w = p.w + b * n * k;
  const T* d = p.d + b * n;
  const T* v = p.v + b * p.m;
  for (int64_t r = 0; r < p.hi; ++r) std::copy(M + r * P, M + r * P + W, head + r * W);
  for (int64_t c = 0; c < W; ++c) g[c] = T(0);
  std::vector<const T*> src(k);
  std::vector<T> a(k);
  int64_t ks = 0;  // sources other than row i itself
  for (int64_t i = 0; i < n; ++i) {
    T* row = M + i * P;
    T* saved = ring + (i % slots) * W;  // old row i, kept for rows i + 1 .. i + lo
    const T ci = coef[i];
    T self = p.decay;  // γ plus the self-connection's weight, if offset 0 is selected
    ks = 0;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t j = i + p.offsets[s];
      if (j == i) {
        self += d[i] * w[i * k + s];
        continue;
      }
      if (j >= n) {
        src[ks] = head + (j - n) * W;  // wrapped past the end: rows 0 .. hi - 1, saved
      } else if (j > i) {
        src[ks] = M + j * P;  // not yet overwritten
      } else if (j >= 0) {
        src[ks] = ring + (j % slots) * W;  // overwritten, saved
      } else {
        src[ks] = M + (j + n) * P;  // wrapped below 0: rows n - lo .. n - 1, not yet overwritten
      }
      a[ks++] = d[i] * w[i * k + s];
    }
    const int64_t imm_lo = std::max(i * p.m, c0) - c0;
    const int64_t imm_hi = std::min((i + 1) * p.m, c0 + W) - c0;
    const int64_t next = i + p.hi + kPrefetchRows;
    const T* ahead = next < n ? M + next * P : nullptr;
    switch (ks) {
      case 0: Row<T, 0>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 1: Row<T, 1>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 2: Row<T, 2>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 3: Row<T, 3>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 4: Row<T, 4>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 5: Row<T, 5>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 6: Row<T, 6>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 7: Row<T, 7>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      case 8: Row<T, 8>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead); break;
      default: Row<T, -1>(row, saved, g, ci, self, src.data(), a.data(), W, acc, ks, ahead);
    }
    for (int64_t c = imm_lo; c < imm_hi; ++c) row[c] += d[i] * v[c0 + c - i * p.m];
  }
}

// Banded fast path for the ring mask (offsets exactly -lo .. hi, k = lo + hi + 1 <= 8, lo =
// (k - 1) / 2): rows are swept in blocks of RB, and each column's window of RB + k - 1 old values
// is loaded once and used by all RB rows (A [RB, K], row r's coefficient of window entry r + q),
// so a value is read from cache about (RB + k - 1) / RB times instead of k + 2 times. At k = 4 this
// took the sparse_rtrl step from 0.40 to 0.19 ms at n = 128 (M in L3) and from 5.0 to 2.6 ms at
// n = 256.
template <typename T, int RB, int K>
void Band(T* const* out, const T* const* win, T* const* save, T* __restrict g, const T* cf,
          const T* A, int64_t W, const T* ahead) {
  constexpr int LO = (K - 1) / 2;
  T* o_[RB];
  const T* w_[RB + K - 1];
  T* s_[LO > 0 ? LO : 1];
  T a_[RB * K];
  T cf_[RB];
  for (int r = 0; r < RB; ++r) o_[r] = out[r], cf_[r] = cf[r];
  for (int q = 0; q < RB + K - 1; ++q) w_[q] = win[q];
  for (int s = 0; s < LO; ++s) s_[s] = save[s];
  for (int q = 0; q < RB * K; ++q) a_[q] = A[q];
  for (int64_t c0 = 0; c0 < W; c0 += kChunk) {
    const int64_t c1 = std::min(W, c0 + kChunk);
    Prefetch(ahead, c0, c1);
#pragma GCC ivdep
    for (int64_t c = c0; c < c1; ++c) {
      T x[RB + K - 1];
      for (int q = 0; q < RB + K - 1; ++q) x[q] = w_[q][c];
      T gg = g[c];
      for (int r = 0; r < RB; ++r) gg += cf_[r] * x[LO + r];
      g[c] = gg;
      for (int s = 0; s < LO; ++s) s_[s][c] = x[RB + s];
      for (int r = 0; r < RB; ++r) {
        T y = a_[r * K] * x[r];
        for (int q = 1; q < K; ++q) y += a_[r * K + q] * x[r + q];
        o_[r][c] = y;
      }
    }
  }
}

template <typename T, int RB, int K>
void BandTile(const Problem<T>& p, int64_t index, T* ring, T* head) {
  constexpr int LO = (K - 1) / 2, HI = K / 2, S = RB + LO;
  const int64_t tiles = (p.P + p.tile - 1) / p.tile;
  const int64_t b = index / tiles;
  const int64_t c0 = (index % tiles) * p.tile;
  const int64_t W = std::min(p.tile, p.P - c0);
  const int64_t n = p.n, P = p.P;
  T* M = p.M + b * n * P + c0;
  T* g = p.g + b * P + c0;
  const T* coef = p.coef + b * n;
  const T* w = p.w + b * n * p.k;
  const T* d = p.d + b * n;
  const T* v = p.v + b * p.m;
  for (int64_t r = 0; r < HI; ++r) std::copy(M + r * P, M + r * P + W, head + r * W);
  for (int64_t c = 0; c < W; ++c) g[c] = T(0);
  T* out[RB];
  const T* win[RB + K - 1];
  T* save[LO > 0 ? LO : 1];
  T A[RB * K];
  for (int64_t i = 0; i < n; i += RB) {
    for (int q = 0; q < RB + K - 1; ++q) {
      const int64_t u = i - LO + q;
      if (u < 0) {
        win[q] = M + (u + n) * P;  // rows n - lo .. n - 1, overwritten only by the last block
      } else if (u < i) {
        win[q] = ring + (u % S) * W;  // overwritten, saved
      } else if (u < n) {
        win[q] = M + u * P;  // not yet overwritten
      } else {
        win[q] = head + (u - n) * W;  // past the end: rows 0 .. hi - 1, saved
      }
    }
    for (int s = 0; s < LO; ++s) save[s] = ring + ((i + RB - LO + s) % S) * W;
    for (int r = 0; r < RB; ++r) {
      out[r] = M + (i + r) * P;
      for (int q = 0; q < K; ++q) A[r * K + q] = T(0);
      for (int64_t s = 0; s < p.k; ++s) {
        A[r * K + p.offsets[s] + LO] = d[i + r] * w[(i + r) * p.k + s];
      }
      A[r * K + LO] += p.decay;
    }
    const int64_t next = i + RB + HI + kPrefetchRows;
    Band<T, RB, K>(out, win, save, g, coef + i, A, W, next < n ? M + next * P : nullptr);
    for (int r = 0; r < RB; ++r) {
      const int64_t row = i + r;
      const int64_t lo = std::max(row * p.m, c0) - c0, hi = std::min((row + 1) * p.m, c0 + W) - c0;
      for (int64_t c = lo; c < hi; ++c) out[r][c] += d[row] * v[c0 + c - row * p.m];
    }
  }
}

struct Shared {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> active{0};
  std::mutex mu;
  std::condition_variable cv;
};

template <typename T>
void Work(const std::shared_ptr<Shared>& shared, const Problem<T>& p, int64_t total) {
  std::vector<T> ring((p.lo + kRows) * p.tile), acc(kSub);
  std::vector<T> head(std::max<int64_t>(p.hi, 1) * p.tile);
  for (int64_t i = shared->next.fetch_add(1); i < total; i = shared->next.fetch_add(1)) {
    switch (p.banded) {
      case 1: BandTile<T, kRows, 1>(p, i, ring.data(), head.data()); break;
      case 2: BandTile<T, kRows, 2>(p, i, ring.data(), head.data()); break;
      case 3: BandTile<T, kRows, 3>(p, i, ring.data(), head.data()); break;
      case 4: BandTile<T, kRows, 4>(p, i, ring.data(), head.data()); break;
      case 5: BandTile<T, kRows, 5>(p, i, ring.data(), head.data()); break;
      case 6: BandTile<T, kRows, 6>(p, i, ring.data(), head.data()); break;
      case 7: BandTile<T, kRows, 7>(p, i, ring.data(), head.data()); break;
      case 8: BandTile<T, kRows, 8>(p, i, ring.data(), head.data()); break;
      default: RunTile(p, i, ring.data(), head.data(), acc.data());
    }
  }
}

template <typename T>
void Run(ffi::ThreadPool& pool, const Problem<T>& p) {
  const int64_t total = p.batch * ((p.P + p.tile - 1) / p.tile);
  auto shared = std::make_shared<Shared>();
  // Below about a million values a helper's wake-up costs more than it saves (n = 32, 5 seeds:
  // 9 µs per seed and step with a helper, 4.4 without).
  const int64_t values = p.batch * p.n * p.P;
  const int64_t helpers =
      values < (int64_t{1} << 20) ? 0 : std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t t = 0; t < helpers; ++t) {
    shared->active.fetch_add(1);
    pool.Schedule([shared, p, total]() {
      Work(shared, p, total);
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->active.fetch_sub(1);
      shared->cv.notify_all();
    });
  }
  Work(shared, p, total);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->active.load() == 0; });
}

template <typename T>
ffi::Error Typed(ffi::ThreadPool& pool, ffi::AnyBuffer M_in, ffi::AnyBuffer w, ffi::AnyBuffer d,
                 ffi::AnyBuffer v, ffi::AnyBuffer coef, ffi::Span<const int64_t> offsets,
                 double decay, ffi::Result<ffi::AnyBuffer> M_out,
                 ffi::Result<ffi::AnyBuffer> g) {
  auto dims = M_in.dimensions();
  const int64_t rank = dims.size();
  Problem<T> p;
  p.n = dims[rank - 3];
  p.m = dims[rank - 1];
  p.P = dims[rank - 2] * p.m;
  p.k = static_cast<int64_t>(offsets.size());
  p.batch = static_cast<int64_t>(M_in.element_count()) / std::max<int64_t>(p.n * p.P, 1);
  if (dims[rank - 2] != p.n) return ffi::Error::InvalidArgument("M must be [..., n, n, m]");
  if (static_cast<int64_t>(w.element_count()) != p.batch * p.n * p.k ||
      static_cast<int64_t>(d.element_count()) != p.batch * p.n ||
      static_cast<int64_t>(coef.element_count()) != p.batch * p.n ||
      static_cast<int64_t>(v.element_count()) != p.batch * p.m ||
      static_cast<int64_t>(g->element_count()) != p.batch * p.P) {
    return ffi::Error::InvalidArgument("ring_sweep: operand sizes do not match M");
  }
  p.M = M_out->typed_data<T>();
  if (M_in.untyped_data() != M_out->untyped_data()) {
    std::copy(M_in.typed_data<T>(), M_in.typed_data<T>() + M_in.element_count(), p.M);
  }
  p.g = g->typed_data<T>();
  p.w = w.typed_data<T>();
  p.d = d.typed_data<T>();
  p.v = v.typed_data<T>();
  p.coef = coef.typed_data<T>();
  p.offsets = offsets.begin();
  p.decay = static_cast<T>(decay);
  p.lo = 0;
  p.hi = 0;
  for (int64_t s = 0; s < p.k; ++s) {
    if (offsets[s] <= -p.n || offsets[s] >= p.n) {
      return ffi::Error::InvalidArgument("ring_sweep: offsets must lie in (-n, n)");
    }
    p.lo = std::max(p.lo, -offsets[s]);
    p.hi = std::max(p.hi, offsets[s]);
  }
  // The banded path: offsets exactly -lo .. hi with lo = (k - 1) / 2 (the ring mask's order),
  // or no offsets (traces: one window row, weight γ).
  const int64_t K = std::max<int64_t>(p.k, 1);
  bool contiguous = K <= 8 && p.lo == (K - 1) / 2 && p.hi == K / 2 && p.n % kRows == 0 &&
                    p.n >= kRows + p.lo;
  for (int64_t s = 0; s < p.k && contiguous; ++s) {
    for (int64_t t = 0; t < s; ++t) contiguous = contiguous && offsets[s] != offsets[t];
  }
  p.banded = contiguous ? static_cast<int>(K) : 0;
  // The rows a tile keeps in flight take about 256 KiB, a quarter of a core's L2 here (tiles of
  // 32 to 1024 KiB measured within 15 % of each other at n = 256).
  const int64_t rows = p.banded ? kRows + K + p.lo : p.lo + p.hi + 2;
  const int64_t target = (int64_t{256} << 10) / (rows * static_cast<int64_t>(sizeof(T)));
  p.tile = std::min(p.P, std::max<int64_t>(kSub, target / kSub * kSub));
  if (p.batch * p.P == 0) return ffi::Error::Success();
  Run(pool, p);
  return ffi::Error::Success();
}

ffi::Error RingSweep(ffi::ThreadPool pool, ffi::AnyBuffer M_in, ffi::AnyBuffer w,
                     ffi::AnyBuffer d, ffi::AnyBuffer v, ffi::AnyBuffer coef,
                     ffi::Span<const int64_t> offsets, double decay,
                     ffi::Result<ffi::AnyBuffer> M_out, ffi::Result<ffi::AnyBuffer> g) {
  switch (M_in.element_type()) {
    case ffi::DataType::F32:
      return Typed<float>(pool, M_in, w, d, v, coef, offsets, decay, M_out, g);
    case ffi::DataType::F64:
      return Typed<double>(pool, M_in, w, d, v, coef, offsets, decay, M_out, g);
    default:
      return ffi::Error::InvalidArgument("ring_sweep: M must be float32 or float64");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CreditRingSweep, RingSweep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // M [..., n, n, m]
                                  .Arg<ffi::AnyBuffer>()  // w [..., n, k]
                                  .Arg<ffi::AnyBuffer>()  // d [..., n]
                                  .Arg<ffi::AnyBuffer>()  // v [..., m]
                                  .Arg<ffi::AnyBuffer>()  // coef [..., n]
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Attr<double>("decay")
                                  .Ret<ffi::AnyBuffer>()   // M_t, aliased with M
                                  .Ret<ffi::AnyBuffer>());  // g [..., n, m]
