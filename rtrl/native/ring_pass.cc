// One in-place pass over the sensitivity tensor for ring-sparse RTRL and eligibility traces, an
// XLA FFI custom call for the CPU (see rtrl/native.py).
//
// Per batch element, with M_l [n, P] the sensitivity of carry leaf l (l = 0: h; l = 1: the LSTM's
// c), P = R m (column a m + j is Θ[a, j], R = G n parameter rows) and k ring offsets o_s: the
// elementwise core makes the step linear in the old rows with per-neuron coefficients
// (computed in rtrl/native.py from the core's Jacobians, d = φ'(z) for the vanilla cell),
//
//   M_l,t[i, :] = Σ_s A[i, l, s] M_h,t-1[(i + o_s) mod n, :] + Σ_l' B[i, l, l'] M_l',t-1[i, :]
//                 + Σ_g E[i, l, g] I_g[i, :],     I_g[i, a m + j] = δ_{a, g n + i} v_j
//   g[:]        = Σ_i Σ_l coef[i, l] M_l,t-1[i, :]            (the gradient contraction)
//
// Columns are independent, so M is split in column tiles [c0, c0 + W). Within a tile the rows are
// passed in order (in blocks of 4 on the banded path, see Band), each row's run of W values read
// from M once and overwritten once in the same fused loop (which also takes the contraction); the
// old rows still needed after their own turn are kept in small buffers that stay in cache. So M
// is read once and written once, in long contiguous runs the hardware prefetcher follows (helped
// by software prefetches of the next rows). (Tiles that kept all n rows of a narrow column range
// in a buffer were 1.7× slower: n short strided runs per tile.) Tiles are shared out to XLA's
// intra-op thread pool through an atomic counter; the calling thread claims tiles too, and then
// waits only for tiles that are being run (see Shared). The general path (any offsets and n)
// serves one leaf only.

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
  T* M[2];         // [batch, n, R, m] per leaf; M[1] unused when L = 1
  T* g;            // [batch, R, m]
  const T* A;      // [batch, n, L, k]
  const T* B;      // [batch, n, L, L]
  const T* E;      // [batch, n, L, G]
  const T* v;      // [batch, m]
  const T* coef;   // [batch, n, L]
  const int64_t* offsets;
  int64_t batch, n, m, G, L, P, k, lo, hi, tile;  // lo, hi: reach of the offsets below and above
  int banded;  // K of the banded path (offsets -lo .. hi, see Band), 0: the general path
};

// out[c] += Σ_g E[g] v_j over the columns c of row i's immediate terms (parameter rows g n + i)
// that fall in the tile [c0, c0 + W).
template <typename T>
void Immediate(const Problem<T>& p, int64_t i, const T* e, const T* v, int64_t c0, int64_t W,
               T* out) {
  for (int64_t gate = 0; gate < p.G; ++gate) {
    const int64_t row = gate * p.n + i;
    const int64_t lo = std::max(row * p.m, c0) - c0, hi = std::min((row + 1) * p.m, c0 + W) - c0;
    for (int64_t c = lo; c < hi; ++c) out[c] += e[gate] * v[c0 + c - row * p.m];
  }
}

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

// Tile `index`: batch element b, columns [c0, c0 + W). Rows are passed in order i = 0 .. n-1, each
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
  T* M = p.M[0] + b * n * P + c0;
  T* g = p.g + b * P + c0;
  const T* coef = p.coef + b * n;  // L = 1 on this path
  const T* A = p.A + b * n * k;
  const T* B = p.B + b * n;
  const T* E = p.E + b * n * p.G;
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
    T self = B[i];  // B (γ for traces) plus the self-connection's weight if offset 0 is selected
    ks = 0;
    for (int64_t s = 0; s < k; ++s) {
      const int64_t j = i + p.offsets[s];
      if (j == i) {
        self += A[i * k + s];
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
      a[ks++] = A[i * k + s];
    }
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
    Immediate(p, i, E + i * p.G, v, c0, W, row);
  }
}

// Banded fast path for the ring mask (offsets exactly -lo .. hi, k = lo + hi + 1 <= 8, lo =
// (k - 1) / 2), for L = 1 or 2 leaves: rows are passed in blocks of RB, and each column's window of
// RB + k - 1 old h values is loaded once and used by all RB rows and both leaves (A [L, RB, K]:
// leaf l, row r, coefficient of window entry r + q, with B[·, 0] folded in at q = lo; Bc [L, RB]:
// coefficient of the row's own old c), so a value is read from cache about (RB + k - 1) / RB
// times instead of k + 2 times. At k = 4 this took the vanilla sparse_rtrl step from 0.40 to
// 0.19 ms at n = 128 (M in L3) and from 5.0 to 2.6 ms at n = 256.
template <typename T, int RB, int K, int L>
void Band(T* const* out_h, T* const* out_c, const T* const* win, T* const* save,
          T* __restrict g, const T* cf, const T* A, const T* Bc, int64_t W, const T* ahead) {
  constexpr int LO = (K - 1) / 2;
  T* oh[RB];
  T* oc[RB];
  const T* w_[RB + K - 1];
  T* s_[LO > 0 ? LO : 1];
  T a_[L * RB * K];
  T bc[L * RB];
  T cf_[L * RB];
  for (int r = 0; r < RB; ++r) oh[r] = out_h[r], oc[r] = L == 2 ? out_c[r] : nullptr;
  for (int q = 0; q < RB + K - 1; ++q) w_[q] = win[q];
  for (int s = 0; s < LO; ++s) s_[s] = save[s];
  for (int q = 0; q < L * RB * K; ++q) a_[q] = A[q];
  for (int q = 0; q < L * RB; ++q) bc[q] = Bc[q], cf_[q] = cf[q];
  for (int64_t c0 = 0; c0 < W; c0 += kChunk) {
    const int64_t c1 = std::min(W, c0 + kChunk);
    Prefetch(ahead, c0, c1);
#pragma GCC ivdep
    for (int64_t c = c0; c < c1; ++c) {
      T x[RB + K - 1];
      T xc[RB];
      for (int q = 0; q < RB + K - 1; ++q) x[q] = w_[q][c];
      T gg = g[c];
      for (int r = 0; r < RB; ++r) gg += cf_[r] * x[LO + r];
      if constexpr (L == 2) {
        for (int r = 0; r < RB; ++r) {
          xc[r] = oc[r][c];
          gg += cf_[RB + r] * xc[r];
        }
      }
      g[c] = gg;
      for (int s = 0; s < LO; ++s) s_[s][c] = x[RB + s];
      for (int l = 0; l < L; ++l) {
        for (int r = 0; r < RB; ++r) {
          const T* ar = a_ + (l * RB + r) * K;
          T y = ar[0] * x[r];
          for (int q = 1; q < K; ++q) y += ar[q] * x[r + q];
          if constexpr (L == 2) y += bc[l * RB + r] * xc[r];
          (l == 0 ? oh : oc)[r][c] = y;
        }
      }
    }
  }
}

template <typename T, int RB, int K, int L>
void BandTile(const Problem<T>& p, int64_t index, T* ring, T* head) {
  constexpr int LO = (K - 1) / 2, HI = K / 2, S = RB + LO;
  const int64_t tiles = (p.P + p.tile - 1) / p.tile;
  const int64_t b = index / tiles;
  const int64_t c0 = (index % tiles) * p.tile;
  const int64_t W = std::min(p.tile, p.P - c0);
  const int64_t n = p.n, P = p.P;
  T* M = p.M[0] + b * n * P + c0;
  T* Mc = L == 2 ? p.M[1] + b * n * P + c0 : nullptr;
  T* g = p.g + b * P + c0;
  const T* coef = p.coef + b * n * L;
  const T* A = p.A + b * n * L * p.k;
  const T* B = p.B + b * n * L * L;
  const T* E = p.E + b * n * L * p.G;
  const T* v = p.v + b * p.m;
  for (int64_t r = 0; r < HI; ++r) std::copy(M + r * P, M + r * P + W, head + r * W);
  for (int64_t c = 0; c < W; ++c) g[c] = T(0);
  T* out_h[RB];
  T* out_c[RB];
  const T* win[RB + K - 1];
  T* save[LO > 0 ? LO : 1];
  T Ab[L * RB * K], Bc[L * RB], cf[L * RB];
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
      const int64_t row = i + r;
      out_h[r] = M + row * P;
      out_c[r] = L == 2 ? Mc + row * P : nullptr;
      for (int l = 0; l < L; ++l) {
        T* ar = Ab + (l * RB + r) * K;
        for (int q = 0; q < K; ++q) ar[q] = T(0);
        for (int64_t s = 0; s < p.k; ++s) ar[p.offsets[s] + LO] = A[(row * L + l) * p.k + s];
        ar[LO] += B[(row * L + l) * L];  // the row's own old h
        Bc[l * RB + r] = L == 2 ? B[(row * L + l) * L + 1] : T(0);  // its own old c
        cf[l * RB + r] = coef[row * L + l];
      }
    }
    const int64_t next = i + RB + HI + kPrefetchRows;
    Band<T, RB, K, L>(out_h, out_c, win, save, g, cf, Ab, Bc, W,
                      next < n ? M + next * P : nullptr);
    for (int r = 0; r < RB; ++r) {
      const int64_t row = i + r;
      for (int l = 0; l < L; ++l) {
        Immediate(p, row, E + (row * L + l) * p.G, v, c0, W, l == 0 ? out_h[r] : out_c[r]);
      }
    }
  }
}

// Completion protocol. Tiles are claimed one at a time from `next`; whoever claims a tile runs it
// to the end without waiting on anything, then adds it to `done`. The caller claims tiles like a
// helper until none are left, so every tile is then claimed by a thread that is running, and it
// waits only for `done` to reach the total: work in progress, never work that has not started.
// A helper the pool starts late (queued behind calls that are themselves working or waiting)
// finds nothing left and returns at once; it keeps `Shared` alive through its shared_ptr and
// touches nothing else. (The caller used to wait for every *scheduled* helper to finish: with
// helpers queued behind callers that waited for theirs, two concurrent calls deadlocked.)
struct Shared {
  explicit Shared(int64_t total) : total(total) {}
  const int64_t total;
  std::atomic<int64_t> next{0};  // tiles claimed
  std::atomic<int64_t> done{0};  // tiles claimed and finished
  std::mutex mu;
  std::condition_variable cv;

  void Finished(int64_t tiles) {
    if (tiles == 0) return;
    if (done.fetch_add(tiles) + tiles == total) {
      std::lock_guard<std::mutex> lock(mu);  // the caller may be between its check and its wait
      cv.notify_all();
    }
  }
};

template <typename T>
void TilePass(const Problem<T>& p, int64_t i, T* ring, T* head, T* acc) {
  switch (p.banded ? p.L * 16 + p.banded : 0) {
    case 17: BandTile<T, kRows, 1, 1>(p, i, ring, head); break;
    case 18: BandTile<T, kRows, 2, 1>(p, i, ring, head); break;
    case 19: BandTile<T, kRows, 3, 1>(p, i, ring, head); break;
    case 20: BandTile<T, kRows, 4, 1>(p, i, ring, head); break;
    case 21: BandTile<T, kRows, 5, 1>(p, i, ring, head); break;
    case 22: BandTile<T, kRows, 6, 1>(p, i, ring, head); break;
    case 23: BandTile<T, kRows, 7, 1>(p, i, ring, head); break;
    case 24: BandTile<T, kRows, 8, 1>(p, i, ring, head); break;
    case 33: BandTile<T, kRows, 1, 2>(p, i, ring, head); break;
    case 34: BandTile<T, kRows, 2, 2>(p, i, ring, head); break;
    case 35: BandTile<T, kRows, 3, 2>(p, i, ring, head); break;
    case 36: BandTile<T, kRows, 4, 2>(p, i, ring, head); break;
    case 37: BandTile<T, kRows, 5, 2>(p, i, ring, head); break;
    case 38: BandTile<T, kRows, 6, 2>(p, i, ring, head); break;
    case 39: BandTile<T, kRows, 7, 2>(p, i, ring, head); break;
    case 40: BandTile<T, kRows, 8, 2>(p, i, ring, head); break;
    default: RunTile(p, i, ring, head, acc);
  }
}

// Claims and runs tiles until none are left; returns how many this thread ran. The buffers are
// allocated only once a tile is claimed, so a late helper costs one atomic increment.
template <typename T>
int64_t Work(Shared& shared, const Problem<T>& p) {
  int64_t i = shared.next.fetch_add(1);
  if (i >= shared.total) return 0;
  std::vector<T> ring((p.lo + kRows) * p.tile), acc(kSub);
  std::vector<T> head(std::max<int64_t>(p.hi, 1) * p.tile);
  int64_t ran = 0;
  for (; i < shared.total; i = shared.next.fetch_add(1), ++ran) {
    TilePass(p, i, ring.data(), head.data(), acc.data());
  }
  return ran;
}

template <typename T>
void Run(ffi::ThreadPool& pool, const Problem<T>& p) {
  const int64_t total = p.batch * ((p.P + p.tile - 1) / p.tile);
  // Below about a million values a helper's wake-up costs more than it saves (n = 32, 5 seeds:
  // 9 µs per seed and step with a helper, 4.4 without).
  const int64_t values = p.batch * p.n * p.P;
  const int64_t helpers =
      values < (int64_t{1} << 20) ? 0 : std::min<int64_t>(pool.num_threads(), total) - 1;
  if (helpers <= 0) {
    Shared alone(total);
    Work(alone, p);
    return;
  }
  auto shared = std::make_shared<Shared>(total);
  for (int64_t t = 0; t < helpers; ++t) {
    pool.Schedule([shared, p]() { shared->Finished(Work(*shared, p)); });
  }
  shared->Finished(Work(*shared, p));
  // Every tile is claimed now, each by a thread that is running it.
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == total; });
}

template <typename T>
ffi::Error Typed(ffi::ThreadPool& pool, int L, const ffi::AnyBuffer* M_in, ffi::AnyBuffer A,
                 ffi::AnyBuffer B, ffi::AnyBuffer E, ffi::AnyBuffer v, ffi::AnyBuffer coef,
                 ffi::Span<const int64_t> offsets, ffi::AnyBuffer* const* M_out,
                 ffi::AnyBuffer* g) {
  auto dims = M_in[0].dimensions();
  const int64_t rank = dims.size();
  if (rank < 3) return ffi::Error::InvalidArgument("ring_pass: M must be [..., n, R, m]");
  Problem<T> p;
  p.L = L;
  p.n = dims[rank - 3];
  p.m = dims[rank - 1];
  p.P = dims[rank - 2] * p.m;
  p.k = static_cast<int64_t>(offsets.size());
  if (p.n == 0 || dims[rank - 2] % p.n != 0) {
    return ffi::Error::InvalidArgument("ring_pass: M must be [..., n, G n, m]");
  }
  p.G = dims[rank - 2] / p.n;
  p.batch = static_cast<int64_t>(M_in[0].element_count()) / std::max<int64_t>(p.n * p.P, 1);
  const auto count = [](const ffi::AnyBuffer& x) { return static_cast<int64_t>(x.element_count()); };
  const int64_t bn = p.batch * p.n;
  if (count(A) != bn * L * p.k || count(B) != bn * L * L || count(E) != bn * L * p.G ||
      count(coef) != bn * L || count(v) != p.batch * p.m || count(*g) != p.batch * p.P ||
      (L == 2 && count(M_in[1]) != count(M_in[0]))) {
    return ffi::Error::InvalidArgument("ring_pass: operand sizes do not match M");
  }
  for (int l = 0; l < L; ++l) {
    p.M[l] = M_out[l]->typed_data<T>();
    if (M_in[l].untyped_data() != M_out[l]->untyped_data()) {
      std::copy(M_in[l].typed_data<T>(), M_in[l].typed_data<T>() + M_in[l].element_count(),
                p.M[l]);
    }
  }
  p.g = g->typed_data<T>();
  p.A = A.typed_data<T>();
  p.B = B.typed_data<T>();
  p.E = E.typed_data<T>();
  p.v = v.typed_data<T>();
  p.coef = coef.typed_data<T>();
  p.offsets = offsets.begin();
  p.lo = 0;
  p.hi = 0;
  for (int64_t s = 0; s < p.k; ++s) {
    if (offsets[s] <= -p.n || offsets[s] >= p.n) {
      return ffi::Error::InvalidArgument("ring_pass: offsets must lie in (-n, n)");
    }
    p.lo = std::max(p.lo, -offsets[s]);
    p.hi = std::max(p.hi, offsets[s]);
  }
  // The banded path: offsets exactly -lo .. hi with lo = (k - 1) / 2 (the ring mask's order),
  // or no offsets (traces: one window row).
  const int64_t K = std::max<int64_t>(p.k, 1);
  bool contiguous = K <= 8 && p.lo == (K - 1) / 2 && p.hi == K / 2 && p.n % kRows == 0 &&
                    p.n >= kRows + p.lo;
  for (int64_t s = 0; s < p.k && contiguous; ++s) {
    for (int64_t t = 0; t < s; ++t) contiguous = contiguous && offsets[s] != offsets[t];
  }
  p.banded = contiguous ? static_cast<int>(K) : 0;
  if (L == 2 && !p.banded) {
    return ffi::Error::InvalidArgument(
        "ring_pass: two leaves (LSTM) need ring offsets, k <= 8 and n a multiple of 4");
  }
  // The rows a tile keeps in flight take about 256 KiB, a quarter of a core's L2 here (tiles of
  // 32 to 1024 KiB measured within 15 % of each other at n = 256).
  const int64_t rows = p.banded ? L * kRows + K + p.lo : p.lo + p.hi + 2;
  const int64_t target = (int64_t{256} << 10) / (rows * static_cast<int64_t>(sizeof(T)));
  p.tile = std::min(p.P, std::max<int64_t>(kSub, target / kSub * kSub));
  if (p.batch * p.P == 0) return ffi::Error::Success();
  Run(pool, p);
  return ffi::Error::Success();
}

ffi::Error Dispatch(ffi::ThreadPool& pool, int L, const ffi::AnyBuffer* M_in, ffi::AnyBuffer A,
                    ffi::AnyBuffer B, ffi::AnyBuffer E, ffi::AnyBuffer v, ffi::AnyBuffer coef,
                    ffi::Span<const int64_t> offsets, ffi::AnyBuffer* const* M_out,
                    ffi::AnyBuffer* g) {
  switch (M_in[0].element_type()) {
    case ffi::DataType::F32:
      return Typed<float>(pool, L, M_in, A, B, E, v, coef, offsets, M_out, g);
    case ffi::DataType::F64:
      return Typed<double>(pool, L, M_in, A, B, E, v, coef, offsets, M_out, g);
    default:
      return ffi::Error::InvalidArgument("ring_pass: M must be float32 or float64");
  }
}

ffi::Error RingPass(ffi::ThreadPool pool, ffi::AnyBuffer M, ffi::AnyBuffer A, ffi::AnyBuffer B,
                     ffi::AnyBuffer E, ffi::AnyBuffer v, ffi::AnyBuffer coef,
                     ffi::Span<const int64_t> offsets, ffi::Result<ffi::AnyBuffer> M_out,
                     ffi::Result<ffi::AnyBuffer> g) {
  ffi::AnyBuffer* out[1] = {&*M_out};
  return Dispatch(pool, 1, &M, A, B, E, v, coef, offsets, out, &*g);
}

ffi::Error RingPass2(ffi::ThreadPool pool, ffi::AnyBuffer M_h, ffi::AnyBuffer M_c,
                      ffi::AnyBuffer A, ffi::AnyBuffer B, ffi::AnyBuffer E, ffi::AnyBuffer v,
                      ffi::AnyBuffer coef, ffi::Span<const int64_t> offsets,
                      ffi::Result<ffi::AnyBuffer> M_h_out, ffi::Result<ffi::AnyBuffer> M_c_out,
                      ffi::Result<ffi::AnyBuffer> g) {
  const ffi::AnyBuffer in[2] = {M_h, M_c};
  ffi::AnyBuffer* out[2] = {&*M_h_out, &*M_c_out};
  return Dispatch(pool, 2, in, A, B, E, v, coef, offsets, out, &*g);
}

}  // namespace

// Shapes (leading batch axes allowed on every operand): M leaves [n, R, m], A [n, L, k],
// B [n, L, L], E [n, L, G], v [m], coef [n, L]; returns the leaves (aliased) and g [R, m].
XLA_FFI_DEFINE_HANDLER_SYMBOL(CreditRingPass, RingPass,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // M
                                  .Arg<ffi::AnyBuffer>()  // A
                                  .Arg<ffi::AnyBuffer>()  // B
                                  .Arg<ffi::AnyBuffer>()  // E
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // coef
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Ret<ffi::AnyBuffer>()   // M_t
                                  .Ret<ffi::AnyBuffer>());  // g

XLA_FFI_DEFINE_HANDLER_SYMBOL(CreditRingPass2, RingPass2,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // M_h
                                  .Arg<ffi::AnyBuffer>()  // M_c
                                  .Arg<ffi::AnyBuffer>()  // A
                                  .Arg<ffi::AnyBuffer>()  // B
                                  .Arg<ffi::AnyBuffer>()  // E
                                  .Arg<ffi::AnyBuffer>()  // v
                                  .Arg<ffi::AnyBuffer>()  // coef
                                  .Attr<ffi::Span<const int64_t>>("offsets")
                                  .Ret<ffi::AnyBuffer>()   // M_h,t
                                  .Ret<ffi::AnyBuffer>()   // M_c,t
                                  .Ret<ffi::AnyBuffer>());  // g
