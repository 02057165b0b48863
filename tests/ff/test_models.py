"""Parameter counts against the paper (App. E, §4.2), augmentation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ff import augment, backbones, cnn, mlp, rules, synthetic
from ff.dtg import DTGNet


def _count(model):
    return backbones.count(jax.eval_shape(lambda k: model.init(k), jax.random.key(0)))


def test_synthetic_students_have_the_papers_parameter_counts_at_k10():
    got = {name: _count(make(10)) for name, make in synthetic.STUDENTS.items()}
    # DTG-FF 56,064 + 4 α = 56,068; DeepSup + 4 heads 61,224; BP 57,354; Ensemble 4 × 57,354
    assert got == {"dtg_ff": 56_068, "bp_deepsup": 61_224, "bp": 57_354, "bp_ensemble": 229_416}
    assert got == synthetic.PAPER_PARAMETER_COUNTS
    readout = jax.eval_shape(lambda k: synthetic.dtg_student(10).init_readout(k), jax.random.key(0))
    assert backbones.count(readout) == synthetic.PAPER_DTG_BUFFERS == 5_160
    # the counts' K-dependence: DeepSup − DTG = 4 (128 K + K) − 4, stable across K
    for K in (5, 50):
        assert _count(synthetic.deepsup_student(K)) - _count(synthetic.dtg_student(K)) == (
            4 * 129 * K - 4
        )


def test_vgg8_shapes_and_concat_width_are_the_papers():
    model = cnn.dtg_cnn(10)
    assert model.backbone.widths == (128, 256, 256, 512, 512, 512, 512)
    assert [model.backbone.map_size(l) for l in range(7)] == [
        (32, 32), (32, 32), (16, 16), (16, 16), (8, 8), (4, 4), (2, 2)
    ]  # fmt: skip
    shapes = jax.eval_shape(lambda k: model.init(k), jax.random.key(0))
    assert shapes["classifier"]["W"].shape == (2560, 10)  # 256 + 256 + 3 · 512 (§4.2)
    # spatial goodness m_l = 2 · 2 · C_l ∈ {512, 1024, 2048} (App. A.5's sizes)
    assert {model.backbone.goodness_dim(l) for l in range(7)} == {512, 1024, 2048}
    assert "classifier" not in jax.eval_shape(
        lambda k: cnn.dtg_cnn(10, aggregation="logit_sum").init(k), jax.random.key(0)
    )
    small = cnn.dtg_cnn(10, width_scale=1 / 32)
    assert small.backbone.widths == (4, 8, 8, 16, 16, 16, 16)


def test_augmentation_is_a_pure_function_of_its_key():
    key = jax.random.key(0)
    x = jax.random.uniform(key, (3, 32, 32, 3))
    run = jax.jit(augment.augment)  # compiled once, called twice
    a, b = run(key, x), run(key, x)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    ones = jnp.ones((2, 32, 32, 1))
    cut = jax.jit(augment.cutout, static_argnums=2)(key, ones, 16)
    zeros = np.asarray((cut == 0).sum(axis=(1, 2, 3)))
    assert np.all(zeros <= 256) and np.all(zeros >= 64)  # a 16×16 square, clipped at borders
    flipped = jax.jit(augment.random_flip)(key, x)
    for i in range(3):
        assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
    crop = jax.jit(augment.random_crop, static_argnums=2)(key, ones, 4)
    assert crop.shape == ones.shape
    assert augment.scaled(28) == augment.AugmentConfig(pad=4, cutout=14)
    assert augment.scaled(32) == augment.AugmentConfig()
    assert augment.pad_to(jnp.ones((1, 28, 28, 1)), 32).shape == (1, 32, 32, 1)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        augment.cutout(key, jnp.ones((32, 32)), 16)


def test_synthetic_task_labels_follow_the_teacher():
    make = jax.jit(synthetic.make_task, static_argnums=(1, 2, 3))
    task = make(jax.random.key(42), 5, 200, 50)
    assert task.x_train.shape == (200, 50) and task.x_test.shape == (50, 50)
    assert set(np.unique(task.y_train)) <= set(range(5))
    again = make(jax.random.key(42), 5, 200, 50)
    np.testing.assert_array_equal(task.y_test, again.y_test)
    # labels are the argmax of the teacher's logits; sample() regenerates make_task's split
    kt, kx = jax.random.split(jax.random.key(42))
    teacher = synthetic.init_teacher(kt, 5)
    want = np.argmax(np.asarray(synthetic.teacher_logits(teacher, task.x_test)), axis=-1)
    np.testing.assert_array_equal(task.y_test, want)
    x, y = synthetic.sample(teacher, kx, 250)
    np.testing.assert_array_equal(x[200:], task.x_test)
    np.testing.assert_array_equal(y[200:], task.y_test)


def test_bad_input_raises_naming_the_fix():
    dense = synthetic.dtg_student(3, d_in=5, width=4, depth=2)
    with pytest.raises(ValueError, match="unknown ff rule"):
        rules.get("backprop", dense)
    with pytest.raises(ValueError, match="needs a BPNet"):
        rules.get("bp", dense)
    with pytest.raises(ValueError, match="needs a DTGNet"):
        rules.get("dtg_ff", synthetic.bp_student(3))
    with pytest.raises(ValueError, match="does not take options"):
        rules.get("bp", synthetic.bp_student(3), micro_batches=2)
    with pytest.raises(ValueError, match="head='deepsup'"):
        rules.get("bp_deepsup", synthetic.bp_student(3))
    with pytest.raises(ValueError, match=r"hinton\(\.\.\.\)"):
        rules.get("hinton_ff", mlp.FFMLP(d_in=5, widths=(4, 4), classes=3))
    with pytest.raises(ValueError, match="aggregation must be one of"):
        DTGNet(dense.backbone, 3, aggregation="mean")
    with pytest.raises(ValueError, match="K >= 2"):
        synthetic.dtg_student(1)
    with pytest.raises(ValueError, match="d_in must be >= K"):
        mlp.FFMLP(d_in=5, widths=(4, 4), classes=10)
    with pytest.raises(ValueError, match="odd map"):
        cnn.dtg_cnn(10, image=(28, 28))  # pad Fashion-MNIST to 32 first
    with pytest.raises(ValueError, match="smaller than goodness_pool"):
        cnn.dtg_cnn(10, image=(16, 16))
    with pytest.raises(ValueError, match="unknown options"):
        cnn.dtg_cnn(10, depth=7)
    with pytest.raises(ValueError, match="expects images"):
        cnn.dtg_cnn(3, width_scale=1 / 64).backbone.prepare(jnp.ones((2, 28, 28, 1)))
    with pytest.raises(ValueError, match="dropout must lie"):
        synthetic.Dense(5, (4,), dropout=1.0)
    net = synthetic.bp_student(3, d_in=5, width=4, depth=2)
    rule = rules.get("bp_accumulate", net, micro_batches=2)
    p = net.init(jax.random.key(0))
    with pytest.raises(ValueError, match="not divisible"):
        rule.step(p, rule.init(jax.random.key(0), p), jnp.ones((3, 5)), jnp.zeros(3, jnp.int32))
