"""MDMF detector: patch units, the reference bank, fast vs exact scoring, and the model folder."""

import numpy as np
import torch

from aigi.checkpoints import ModelConfig, build_model, load_model, save_model

SPEC = {"family": "efficientnet_lite0", "options": {"feature_level": "stage4", "pretrained": False}}


def _model(**params):
    torch.manual_seed(0)
    return build_model(
        ModelConfig(detector="mdmf", params={"proj_hidden": 32, "proj_dim": 8, "sigma_q": 4.0, **params}, backbone=SPEC)
    )


def _tokens(n_images, shift=0.0, seed=0, grid=14, dim=112):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_images, grid * grid, dim, generator=g) + shift


def test_pooling_makes_the_patch_unit():
    det = _model(pool=2).detector
    x, grid = det.patches(_tokens(3))
    assert x.shape == (3, 49, 112) and grid == (7, 7)
    tokens = _tokens(1)
    manual = tokens[0].reshape(14, 14, 112)[:2, :2].mean((0, 1))
    assert torch.allclose(x[0, 0], manual, atol=1e-6)


def test_scores_grow_with_the_shift_and_fast_tracks_exact():
    det = _model(rff_features=8192, bank_patches=20 * 196).detector
    det.set_bank(_tokens(20, seed=1), torch.Generator().manual_seed(0))
    fast = [det.mmd2(_tokens(4, shift=s, seed=2))[0].mean().item() for s in (0.0, 0.3, 0.6)]
    assert fast[0] < fast[1] < fast[2], fast
    det.params.estimator = "exact"
    exact = [det.mmd2(_tokens(4, shift=s, seed=2))[0].mean().item() for s in (0.0, 0.3, 0.6)]
    assert exact[0] < exact[1] < exact[2], exact
    for f, e in zip(fast, exact):
        assert abs(f - e) < 0.1 * max(e, 1e-3) + 2e-3, (fast, exact)


def test_patch_shares_sum_to_the_score():
    det = _model(pool=2).detector
    det.set_bank(_tokens(6, seed=1))
    for estimator in ("fast", "exact"):
        det.params.estimator = estimator
        mmd2, share, grid = det.mmd2(_tokens(2, shift=0.5, seed=3))
        assert grid == (7, 7) and share.shape == (2, 49)
        assert torch.allclose(share.sum(-1), mmd2, rtol=1e-4, atol=1e-6)
        out = det.score(_tokens(2, seed=3))
        assert out.patch_map.shape == (2, 7, 7) and out.logit.shape == (2,)


def test_model_folder_round_trip(tmp_path):
    m = _model(pool=2)
    m.detector.set_bank(_tokens(5, seed=1))
    m.detector.score_center.fill_(0.3)
    save_model(m, tmp_path / "mdmf")
    torch.manual_seed(123)  # another random backbone would change features, not the stored head
    loaded = load_model(tmp_path / "mdmf")
    a, b = m.detector.trainable_state_dict(), loaded.detector.trainable_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    tokens = _tokens(2, seed=4)
    with torch.no_grad():
        assert torch.equal(m.detector.score(tokens).logit, loaded.detector.score(tokens).logit)


def test_training_recipe_runs_and_stores_a_usable_bank(labelled_images, tmp_path):
    import json

    from aigi.backbones import BackboneSpec
    from aigi.engine.trainer import train

    params = {"pool": 2, "proj_hidden": 16, "proj_dim": 4, "rff_features": 64, "bank_patches": 64}
    model = train(
        "mdmf",
        dict(
            data=labelled_images,
            out=tmp_path / "m",
            val=labelled_images,
            spec=BackboneSpec(**SPEC).model_dump(),
            params=params,
            steps=5,
            images_per_side=2,
            patches_per_side=32,
        ),
        progress=False,
    )
    info = json.loads((tmp_path / "m" / "config.json").read_text())["training"]
    assert (
        info["criterion"].startswith("(mean s_fake - mean s_real)")
        and info["config"]["steps"] == 5
        and "val_auroc" in info
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["params"]["score_form"] == "log"
    assert [json.loads(x)["step"] for x in (tmp_path / "m" / "train_log.jsonl").read_text().splitlines()] == [5]
    det = model.detector
    assert float(det.bank_embedding.abs().sum()) > 0 and float(det.score_scale) > 0
    assert float(det.token_std.min()) > 0


def test_image_level_criterion_rewards_separated_images():
    """The criterion grows when generated images sit farther from the bank than real ones."""
    from aigi.detectors.mdmf_recipe import _image_level_power

    det = _model().detector
    ref = det.patches(_tokens(8, seed=1))[0].reshape(-1, 112)
    g = torch.Generator().manual_seed(0)
    near, _ = _image_level_power(det, _tokens(8, seed=2), _tokens(8, seed=3), ref, 8, 256, 1e-8, g)
    far, _ = _image_level_power(det, _tokens(8, seed=2), _tokens(8, shift=1.0, seed=3), ref, 8, 256, 1e-8, g)
    assert far > near + 1.0, (near, far)


def test_exact_estimator_is_blocked_over_the_bank_and_tracks_projection_changes():
    det = _model(pool=2, bank_patches=300).detector
    det.set_bank(_tokens(8, seed=1), torch.Generator().manual_seed(0))
    det.params.estimator = "exact"
    x = _tokens(3, shift=0.3, seed=5)
    with torch.no_grad():
        whole = det.mmd2(x)[0]
        det.BLOCK_FLOATS = 3 * 49 * 17  # blocks of 17 bank patches: 300 in 18 blocks, the last one short
        blocked = det.mmd2(x)[0]
        assert torch.allclose(whole, blocked, rtol=1e-5, atol=1e-7)
        det.project[0].weight.mul_(1.5)  # the cached bank projection must follow the weights
        changed = det.mmd2(x)[0]
    det.BLOCK_FLOATS = 1 << 24
    with torch.no_grad():
        fresh = det.mmd2(x)[0]
    assert not torch.allclose(changed, blocked) and torch.allclose(changed, fresh, rtol=1e-5, atol=1e-7)


def test_probabilities_follow_log_mmd_and_do_not_saturate():
    """A distance orders of magnitude beyond the reals' must still rank above a smaller one (no ties at P = 1)."""
    from aigi.detectors.mdmf_recipe import _log_score_scale

    rng = np.random.default_rng(0)
    real, fake = rng.normal(-6, 0.5, 200), rng.normal(-3, 1.0, 200)  # log MMD^2 of training images
    center, scale = _log_score_scale(real, fake)
    assert -5 < center < -4 and 0.5 < scale < 1
    det = _model().detector
    det.score_center.fill_(center)
    det.score_scale.fill_(scale)
    mmd2 = torch.tensor([1e-3, 1e-2, 1.0, 10.0, 100.0], dtype=torch.float64)
    prob = torch.sigmoid((det.log_score(mmd2) - det.score_center) / det.score_scale)
    assert bool((prob.diff() > 0).all()) and float(prob[-1]) < 1.0, prob


def test_exact_scoring_works_for_a_model_built_in_inference_mode():
    with torch.inference_mode():
        det = _model(pool=2, bank_patches=100, estimator="exact").detector
        det.set_bank(_tokens(4, seed=1), torch.Generator().manual_seed(0))
        a = det.mmd2(_tokens(2, seed=6))[0]
        b = det.mmd2(_tokens(2, seed=6))[0]
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_score_form_log_for_trained_models_linear_for_older_folders():
    det = _model().detector
    assert det.params.score_form == "linear"  # a config without the field: an MDMF folder from before the log form
    det.set_bank(_tokens(4, seed=1))
    det.score_center.fill_(0.01)
    det.score_scale.fill_(0.002)
    x = _tokens(2, shift=0.4, seed=7)
    with torch.no_grad():
        mmd2 = det.mmd2(x)[0]
        assert torch.allclose(det.score(x).logit, (mmd2 - 0.01) / 0.002)
        det.params.score_form = "log"
        assert torch.allclose(det.score(x).logit, (torch.log(mmd2) - 0.01) / 0.002)


def test_an_interrupted_mdmf_run_resumes_to_the_same_weights(labelled_images, tmp_path):
    """Steps are logged in epochs of log_every; a rerun with more steps continues (sampler and optimizer restored)."""
    import json

    from aigi.backbones import BackboneSpec
    from aigi.checkpoints import load_model
    from aigi.engine.trainer import train

    params = {"pool": 2, "proj_hidden": 16, "proj_dim": 4, "rff_features": 32, "bank_patches": 16}
    base = dict(
        data=labelled_images,
        spec=BackboneSpec(**SPEC).model_dump(),
        params=params,
        log_every=2,
        images_per_side=2,
        patches_per_side=16,
    )
    straight = train("mdmf", {**base, "out": tmp_path / "straight", "steps": 4}, progress=False)
    train("mdmf", {**base, "out": tmp_path / "resumed", "steps": 2}, progress=False)
    resumed = train("mdmf", {**base, "out": tmp_path / "resumed", "steps": 4}, progress=False)
    a, b = straight.detector.trainable_state_dict(), resumed.detector.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(x) for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    assert load_model(tmp_path / "resumed").config.training["epochs_done"] == 2
    train("mdmf", {**base, "out": tmp_path / "resumed", "steps": 4}, progress=False)  # nothing left: kept as it was
    assert load_model(tmp_path / "resumed").config.training["epochs_done"] == 2
    train("mdmf", {**base, "out": tmp_path / "resumed", "steps": 6}, progress=False)  # and it can still go on
    assert load_model(tmp_path / "resumed").config.training["epochs_done"] == 3
