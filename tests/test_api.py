import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import correlated_inputs
from distil_rank.api import (
    compress_linear,
    compress_model,
    format_report,
    load_compressed,
    save_compressed,
)
from distil_rank.lowrank import (
    LowRankLinear,
    compress_data_aware,
    data_aware_error_curve,
    explained_variance_curve,
    input_moments,
    lowrank_parameters,
)
from distil_rank.moments import MomentAccumulator


class Head(nn.Module):
    """A small model: projection -> GELU -> classifier, applied per residue [B, L, D]."""

    def __init__(self, dim=48, hidden=40, classes=5):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.out = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(self.act(self.proj(x)))


def embeddings(n, dim, seed):
    return correlated_inputs(n, dim, seed, mean_scale=2.0).float()


def test_compress_linear_equals_the_closed_form_from_a_tensor_or_batches():
    torch.manual_seed(0)
    layer = nn.Linear(32, 24)
    x = embeddings(500, 32, seed=0)
    reference = compress_data_aware(layer, x, 6)
    for calibration in (x, x.split(64), iter(x.split(100))):
        student = compress_linear(layer, calibration, rank=6)
        assert isinstance(student, LowRankLinear) and student.rank == 6
        torch.testing.assert_close(student(x), reference(x), atol=1e-5, rtol=1e-5)


def test_target_explained_variance_picks_the_smallest_sufficient_rank():
    torch.manual_seed(1)
    layer = nn.Linear(32, 32)
    x = embeddings(800, 32, seed=1)
    student = compress_linear(layer, x, target_explained_variance=0.95)
    errors = data_aware_error_curve(layer.weight, input_moments(x))
    ev = 1 - errors / errors[0]
    assert ev[student.rank] >= 0.95 > ev[student.rank - 1]
    with torch.no_grad():
        y = layer(x)
        measured = 1 - (y - student(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert measured.item() == pytest.approx(ev[student.rank].item(), abs=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        compress_linear(layer, x)
    with pytest.raises(ValueError, match="outside"):
        compress_linear(layer, x, rank=33)


def test_refinement_never_worsens_the_held_out_error():
    torch.manual_seed(2)
    layer = nn.Linear(24, 24)
    x = embeddings(600, 24, seed=2)
    refined = compress_linear(layer, x, rank=4, refine_steps=100, seed=0)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(600, generator=g)
    fit, held = x[order[90:]], x[order[:90]]
    start = compress_data_aware(layer, fit, 4)
    with torch.no_grad():
        assert F.mse_loss(refined(held), layer(held)) <= F.mse_loss(start(held), layer(held)) + 1e-9


def test_compress_model_replaces_layers_and_reports_holdout_fidelity(monkeypatch):
    from distil_rank.kernels import fused

    torch.manual_seed(3)
    model = Head()
    original = Head()
    original.load_state_dict(model.state_dict())
    calib = [embeddings(64, 48, seed=s).reshape(8, 8, 48) for s in range(6)]  # [B, L, D]
    hold = [embeddings(64, 48, seed=s).reshape(8, 8, 48) for s in range(10, 13)]
    with monkeypatch.context() as patch:  # the holdout is measured by the two products, even
        patch.setattr(LowRankLinear, "fused", "on")  # where the kernel would be taken
        patch.setattr(fused, "use_fused", lambda *a: pytest.fail("the kernel was asked for"))
        reports = compress_model(model, calib, layers=["proj"], rank=8, holdout=hold)
    assert isinstance(model.proj, LowRankLinear) and isinstance(model.out, nn.Linear)
    (report,) = reports
    assert report.name == "proj" and report.rank == 8 and report.calibration_rows == 6 * 64
    assert report.params_saved == (48 * 40 + 40) - (8 * (48 + 40) + 40)
    # the holdout explained variance, recomputed here from the two layers directly
    x = torch.cat([h.reshape(-1, 48) for h in hold])
    with torch.no_grad():
        y, y_hat = original.proj(x).double(), model.proj(x).double()
    expected = 1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
    assert report.explained_variance_holdout == pytest.approx(expected.item(), rel=1e-6)
    assert "proj" in format_report(reports)


def test_compress_model_with_a_target_and_a_predicate_skips_layers_that_save_nothing():
    torch.manual_seed(4)
    model = Head()
    calib = [embeddings(256, 48, seed=s) for s in range(3)]
    with pytest.warns(UserWarning, match="leaves .* dense") as said:
        reports = compress_model(model, calib, layers=lambda name, m: True,
                                 target_explained_variance=0.999)
    # the 40 -> 5 classifier cannot save parameters at any rank, so it stays dense
    assert isinstance(model.out, nn.Linear)
    assert [r.name for r in reports] == (["proj"] if isinstance(model.proj, LowRankLinear) else [])
    dense = [n for n in ("proj", "out") if isinstance(getattr(model, n), nn.Linear)]
    assert f"leaves {len(dense)} layer(s) dense ({', '.join(dense)}): at their rank the " \
           "factors would hold as many parameters as the layer or more" in str(said[0].message)
    with pytest.raises(ValueError, match="not nn.Linear layers"):
        compress_model(Head(), calib, layers=["nope"], rank=2)


def test_layer_names_may_come_as_a_generator_as_a_tuple_or_a_list():
    """A generator of names is read once: the check of the names must not use it up."""
    calib = [embeddings(256, 48, seed=s) for s in range(2)]
    chosen = []
    for layers in (["proj"], ("proj",), (name for name in ["proj"])):
        torch.manual_seed(6)
        model = Head()
        reports = compress_model(model, calib, layers=layers, rank=4)
        chosen.append(([r.name for r in reports], type(model.proj), model.proj.up.sum().item()))
    assert chosen[0][:2] == (["proj"], LowRankLinear) and chosen[1] == chosen[0] == chosen[2]


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(5)
    model = Head()
    compress_model(model, [embeddings(300, 48, seed=0)], layers=["proj"], rank=6)
    path = tmp_path / "head.safetensors"
    save_compressed(model, path)
    fresh = load_compressed(Head(), path)
    assert isinstance(fresh.proj, LowRankLinear) and fresh.proj.rank == 6
    x = embeddings(20, 48, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    torch.save(Head().state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt: not a safetensors file"):
        load_compressed(Head(), tmp_path / "plain.pt")


class TokenModel(nn.Module):
    """A toy transformer-shaped model: token embeddings, then a projection per position."""

    def __init__(self, vocab=30, dim=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, input_ids, attention_mask):
        return self.proj(self.embed(input_ids)) * attention_mask.unsqueeze(-1)


def padded_batches(seed=0, batches=6, size=5, longest=9):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        lengths = torch.randint(2, longest + 1, (size,), generator=g)
        mask = (torch.arange(longest) < lengths[:, None]).long()
        ids = torch.randint(1, 30, (size, longest), generator=g) * mask  # 0: padding
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def test_compress_model_keeps_padding_out_of_the_statistics_when_asked():
    torch.manual_seed(3)
    batches = padded_batches()
    reference = TokenModel()
    with torch.no_grad():
        tokens = torch.cat([reference.embed(b["input_ids"])[b["attention_mask"].bool()]
                            for b in batches])
        every = torch.cat([reference.embed(b["input_ids"]).reshape(-1, 12) for b in batches])
    for skip, rows in ((True, tokens), (False, every)):
        model = TokenModel()
        model.load_state_dict(reference.state_dict())
        compress_model(model, batches, layers=["proj"], rank=4, skip_padding=skip)
        expected = compress_linear(reference.proj, rows, rank=4)  # float64 throughout
        torch.testing.assert_close(model.proj.dense_weight(), expected.dense_weight(),
                                   rtol=1e-4, atol=1e-5)
    assert len(tokens) < len(every)  # the padding rows were there to be skipped


def test_float32_gram_products_change_the_closed_form_by_less_than_the_documented_tolerance():
    """Each batch is centred on its own mean before its float32 product, and batches are merged
    in float64: against float64 throughout, the closed form's weight moves by under 1e-4 of its
    norm, and the explained variance it promises by under 1e-6."""
    x = correlated_inputs(4000, 64, seed=4, mean_scale=20.0)
    layer = nn.Linear(64, 64).double()
    exact = MomentAccumulator(64)
    single = MomentAccumulator(64, gram_dtype=torch.float32)
    for batch in x.float().split(256):
        exact.update(batch)
        single.update(batch)
    a = compress_data_aware(layer, exact.moments(), 8)
    b = compress_data_aware(layer, single.moments(), 8)
    change = (a.dense_weight() - b.dense_weight()).norm() / a.dense_weight().norm()
    assert change < 1e-4
    curves = [explained_variance_curve(data_aware_error_curve(layer.weight, m))[8]
              for m in (exact.moments(), single.moments())]
    assert abs(curves[0] - curves[1]) < 1e-6


def test_svd_bias_is_svd_with_the_mean_shift_in_the_bias_and_only_that():
    """Against numpy's SVD: the factors are the truncated SVD's, the bias is b + (W - W_r) mu,
    so the compressed layer's mean output on the calibration rows is the teacher's, and its
    error is SVD's less exactly the squared offset ||(W - W_r) mu||^2 per row."""
    import numpy as np

    x = correlated_inputs(600, 12, seed=3, mean_scale=5.0).float()
    torch.manual_seed(0)
    layer = nn.Linear(12, 10)
    svd, shifted = (compress_linear(layer, x, rank=3, method=m) for m in ("svd", "svd_bias"))
    w = layer.weight.detach().double().numpy()
    u, s, vt = np.linalg.svd(w)
    w_r = (u[:, :3] * s[:3]) @ vt[:3]
    mu = x.double().mean(0).numpy()
    expected_bias = layer.bias.detach().double().numpy() + (w - w_r) @ mu
    np.testing.assert_allclose(shifted.bias.detach().double().numpy(), expected_bias,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((shifted.up @ shifted.down).detach().double().numpy(), w_r,
                               atol=1e-5)
    with torch.no_grad():
        y, y_svd, y_shifted = layer(x).double(), svd(x).double(), shifted(x).double()
    torch.testing.assert_close(y_shifted.mean(0), y.mean(0), atol=1e-4, rtol=0)
    offset = float(np.sum(((w - w_r) @ mu) ** 2))
    sse = lambda a: (y - a).pow(2).sum(1).mean().item()  # noqa: E731
    assert sse(y_shifted) == pytest.approx(sse(y_svd) - offset, rel=1e-4)
    assert offset > 10 * sse(y_shifted)  # a large common mean: most of SVD's error is offset


def test_compress_model_takes_the_svd_baselines_at_a_rank_and_reports_their_true_fidelity():
    x = correlated_inputs(800, 16, seed=4, mean_scale=4.0).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8))
    for method in ("svd", "svd_bias"):
        replaced = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 8))
        replaced.load_state_dict(model.state_dict())
        reports = compress_model(replaced, x.split(200), rank=3, method=method)
        assert all(type(replaced[i]).__name__ == "LowRankLinear" for i in (0, 2))
        with torch.no_grad():  # the reported calibration EV, recomputed from the rows
            y, y_hat = model[0](x).double(), replaced[0](x).double()
        measured = 1 - (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
        assert reports[0].explained_variance_calibration == pytest.approx(measured.item(),
                                                                          abs=1e-4)
    with pytest.raises(ValueError, match="takes a rank and the layer objective; budget"):
        compress_model(model, x.split(200), budget=0.5, method="svd_bias")
    with pytest.raises(ValueError, match="method 'pca'"):
        compress_linear(model[0], x, rank=2, method="pca")


def test_compress_model_refuses_bad_arguments_before_it_changes_the_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8)
    cases = [
        (TypeError, r"layers: a list of layer names.*one layer: \['ab'\]",
         dict(layers="ab", rank=2)),
        (ValueError, r"measuring on holdout, batch 0: .*the model is unchanged",
         dict(rank=2, holdout=[torch.randn(4, 5)])),
        (ValueError, r"calibrating, batch 0: batch has dimension 3, expected 8",
         dict(rank=2, calib=True)),
        (ValueError, r"budget 'half': expected a fraction", dict(budget="half")),
    ]
    for error, message, options in cases:
        calibration = [torch.randn(4, 3)] if options.pop("calib", False) else x.split(32)
        with pytest.raises(error, match=message):
            compress_model(model, calibration, **options)
        assert all(type(m) in (nn.Linear, nn.ReLU) for m in model)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="not its state_dict"):
        save_compressed(model.state_dict(), tmp_path / "m.safetensors")
    save_compressed(model, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="takes the model"):
        load_compressed(model.state_dict(), tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="takes the model"):
        compress_model(model.state_dict(), x.split(32), rank=2)


def test_refinement_fits_and_chooses_on_disjoint_rows_of_the_calibration(monkeypatch):
    """The rows refinement distils on and the rows that choose its checkpoint are a seeded
    split of the calibration rows: disjoint, together all of them, the held-out share as
    asked; the closed form it starts from is fitted on the fit rows alone."""
    from distil_rank import api
    from distil_rank.embeddings import split_indices

    x = correlated_inputs(400, 10, seed=5).float()
    seen = {}
    real = api.refinement_job

    def spy(teacher, start, fit, holdout, **options):
        seen.update(fit=fit.clone(), holdout=holdout.clone(), start=start)
        return real(teacher, start, fit, holdout, **options)

    monkeypatch.setattr(api, "refinement_job", spy)
    torch.manual_seed(0)
    layer = nn.Linear(10, 6)
    compress_linear(layer, x.split(100), rank=2, refine_steps=3, holdout_fraction=0.25, seed=7)
    fit_rows, held_rows = split_indices(400, 0.25, 7)
    assert torch.equal(seen["fit"], x[fit_rows]) and torch.equal(seen["holdout"], x[held_rows])
    assert not set(fit_rows.tolist()) & set(held_rows.tolist())
    assert len(fit_rows) + len(held_rows) == 400 and len(held_rows) == 100
    expected = compress_data_aware(layer, x[fit_rows], 2)
    torch.testing.assert_close(seen["start"].up @ seen["start"].down,
                               expected.up @ expected.down)


def test_a_compression_config_is_the_keywords_checked_once():
    """compress_model(model, batches, CompressionConfig(...)) is compress_model with the same
    keywords; a config is refused when built (before any model), and an unknown option is a
    TypeError."""
    from distil_rank import CompressionConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(128, 8)
    by_keywords = copy.deepcopy(model)
    reports = compress_model(by_keywords, x.split(32), budget=0.5, seed=3)
    by_config = copy.deepcopy(model)
    config = CompressionConfig(budget=0.5, seed=3)
    assert config.objective == "output"  # resolved once, where it is built
    assert [r.rank for r in compress_model(by_config, x.split(32), config)] == \
        [r.rank for r in reports]
    for a, b in zip(by_keywords.state_dict().values(), by_config.state_dict().values()):
        assert torch.equal(a, b)
    # keywords beside a config replace its fields
    again = copy.deepcopy(model)
    ranks = [r.rank for r in compress_model(again, x.split(32), CompressionConfig(rank=4),
                                            rank=2)]
    assert set(ranks) == {2}
    for options, message in [(dict(budget=1.5), "budget 1.5"), (dict(probes=0), "probes 0"),
                             (dict(rank=2, budget=0.5), "exactly one"),
                             (dict(objective="both"), "objective 'both'"),
                             (dict(damping=-1.0), "damping -1.0"),
                             (dict(seed=-1), "seed -1")]:
        with pytest.raises(ValueError, match=message):
            CompressionConfig(**options)
    for options, message in [(dict(gram_dtype="float64"), "gram_dtype 'float64'"),
                             (dict(output_fn=3, budget=0.5), "output_fn 3")]:
        with pytest.raises(TypeError, match=message):
            CompressionConfig(**options)
    with pytest.raises(TypeError, match="bugdet"):
        compress_model(copy.deepcopy(model), x.split(32), bugdet=0.5)


def test_compress_linear_checks_the_options_it_shares_as_compress_model_does():
    from distil_rank import CompressionConfig

    layer, x = nn.Linear(8, 8), torch.randn(64, 8)
    for options, message in [(dict(rank=2, damping=-1.0), "damping -1.0"),
                             (dict(rank=2, target_explained_variance=0.9), "exactly one"),
                             (dict(rank=2, seed=-1), "seed -1"),
                             (dict(rank=2, method="pca"), "method 'pca'")]:
        with pytest.raises(ValueError, match=message):
            compress_linear(layer, x, **options)
        with pytest.raises(ValueError, match=message):
            CompressionConfig(**options)


def test_a_holdout_whose_output_cannot_vary_is_warned_not_computable():
    """One holdout row: every layer's output spread is 0, so its explained variance is 0 / 0.
    Reported as None with one warning saying why; two rows give a figure."""
    torch.manual_seed(0)
    data = torch.randn(200, 16)
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8))
    with pytest.warns(UserWarning, match=r"not computable.*'0', '2'.*over the 1 holdout row"):
        reports = compress_model(model, data, rank=4, holdout=data[:1])
    assert [r.explained_variance_holdout for r in reports] == [None, None]
    model = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reports = compress_model(model, data, rank=4, holdout=data[:2])
    assert all(r.explained_variance_holdout < 1 for r in reports)


def test_a_config_of_another_type_is_refused_before_the_model_is_touched():
    model = nn.Sequential(nn.Linear(16, 16))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(TypeError, match="config: expected a CompressionConfig, got a dict"):
        compress_model(model, torch.randn(50, 16), config={"rank": 4})
    assert isinstance(model[0], nn.Linear) and all(
        torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pytorchs_own_transformer_layers_stay_dense_and_the_model_still_runs():
    """nn.TransformerEncoderLayer reads linear1/linear2's .weight on its fast path (eval mode),
    and nn.MultiheadAttention its out_proj's: a low-rank layer there broke the model's forward.
    Every layer asked for: those are left dense, said in a warning, and the rest compressed;
    one of them by name: refused before anything changes."""
    torch.manual_seed(7)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
    model = nn.Sequential(encoder, nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    batches = [torch.randn(8, 10, 32) for _ in range(4)]
    kept = [f"0.layers.{i}.{name}" for i in range(2)
            for name in ("self_attn.out_proj", "linear1", "linear2")]
    with pytest.warns(UserWarning, match="leaves 6 layer"):
        reports = compress_model(model, batches, layers=lambda name, m: m.out_features > 4,
                                 rank=8)
    assert [r.name for r in reports] == ["1"] and isinstance(model[1], LowRankLinear)
    assert all(isinstance(model.get_submodule(n), nn.Linear) for n in kept)
    with torch.no_grad():  # the fast path, which reads the dense layers' weights
        out = model(batches[0])
    assert out.shape == (8, 10, 4) and torch.isfinite(out).all()
    assert model(batches[0]).shape == (8, 10, 4)
    with pytest.raises(ValueError, match="read these through their .weight"):
        compress_model(model, batches, layers=[kept[1]], rank=2)
    assert isinstance(model.get_submodule(kept[1]), nn.Linear)


@pytest.mark.parametrize("bias", [True, False])
def test_compress_linear_warns_when_its_factors_hold_no_fewer_parameters(bias):
    """A rank above about half the smaller side gives a layer larger than the dense one:
    compress_linear says so at exactly those ranks, with the largest rank that saves, counted
    here by brute force (the closed form adds a bias where the layer had none)."""
    torch.manual_seed(8)
    layer, x = nn.Linear(48, 20, bias=bias), embeddings(400, 48, seed=8)
    dense = sum(p.numel() for p in layer.parameters())
    saving = max(r for r in range(1, 21) if lowrank_parameters(48, 20, r) < dense)
    for rank in range(1, 21):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compress_linear(layer, x, rank=rank)
        assert bool(caught) == (rank > saving), rank
    assert f"save weights only up to rank {saving} " in str(caught[0].message)
    assert "rank 20 holds 1,380 parameters" in str(caught[0].message)


def test_a_lone_tensor_or_dict_is_one_batch_as_for_compress_linear():
    """Iterating a lone [batch, tokens, features] tensor would feed the model one sequence at a
    time as if its tokens were a batch (and a dict, its keys): a lone one is one batch."""

    class Pool(nn.Module):  # mixes over the tokens: a [tokens, features] input means otherwise
        def __init__(self):
            super().__init__()
            self.proj, self.out = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            y = self.proj(x)
            return self.out(y - y.mean(1, keepdim=True))  # [batch, tokens, features]

    class Keywords(Pool):
        def forward(self, inputs):
            return super().forward(inputs)

    x, held = torch.randn(6, 5, 16), torch.randn(3, 5, 16)
    results = []
    for model_type, lone, listed, holdout in (
            (Pool, x, [x], held), (Keywords, {"inputs": x}, [{"inputs": x}], {"inputs": held})):
        for calibration, hold in ((lone, holdout), (listed, [holdout])):
            torch.manual_seed(9)
            model = model_type()
            report, = compress_model(model, calibration, layers=["proj"], rank=3, holdout=hold,
                                     objective="output")  # G reads the model's mixing
            results.append((report.calibration_rows, report.explained_variance_holdout,
                            model.proj.up.detach().clone()))
    for lone, listed in (results[:2], results[2:]):
        assert lone[0] == listed[0] == 30 and lone[1] == listed[1]
        assert torch.equal(lone[2], listed[2])


class TiedLM(nn.Module):
    """A masked-LM-like model: the head's weight is the embedding's (tied), and one Linear is
    registered under two names."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.proj = nn.Linear(16, 16)
        self.alias = self.proj
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.alias(torch.relu(self.proj(self.embed(ids)))))


def test_tied_weights_and_a_module_under_two_names_survive_compression_and_a_round_trip(
        tmp_path):
    """save_compressed could not write a model with tied weights (safetensors refuses tensors
    that share memory: "could not be written"), and compress_model replaced a module under one
    of its names only, leaving the other call dense. The module is replaced under both; the
    file stores each shared tensor once; loading ties them again."""
    torch.manual_seed(10)
    model = TiedLM()
    ids = [torch.randint(0, 20, (8, 12)) for _ in range(3)]
    compress_model(model, ids, layers=["proj"], rank=4)
    assert isinstance(model.proj, LowRankLinear) and model.alias is model.proj
    path = tmp_path / "tied.safetensors"
    save_compressed(model, path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as stored:
        assert sorted(stored.keys()) == ["embed.weight", "proj.bias", "proj.down", "proj.up"]
    torch.manual_seed(11)
    fresh = load_compressed(TiedLM(), path)
    assert fresh.head.weight is fresh.embed.weight and fresh.alias is fresh.proj
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids[0]), model(ids[0]), rtol=0, atol=0)


def test_calibration_runs_in_eval_mode_and_gives_the_model_its_modes_back():
    """A model left in training mode (nn.Module's default) calibrated through its dropout:
    noisy statistics and a noisy held-out figure. It is recorded in eval mode, so in train or
    eval mode it gives the same factors and reports, and every module keeps its own mode."""
    x = [embeddings(256, 32, seed=s) for s in range(3)]
    hold = [embeddings(256, 32, seed=9)]
    results = []
    for training in (True, False):
        torch.manual_seed(12)
        model = nn.Sequential(nn.Linear(32, 32), nn.Dropout(0.5), nn.GELU(), nn.Linear(32, 4))
        model.train(training)
        model[2].eval()  # a module in its own mode
        torch.manual_seed(13)
        report, = compress_model(model, x, layers=["3"], rank=2, holdout=hold)
        assert [m.training for m in model] == [training, training, False, training]
        results.append((report.explained_variance_calibration,
                        report.explained_variance_holdout, model[3].up.detach().clone()))
    assert results[0][:2] == results[1][:2] and torch.equal(results[0][2], results[1][2])


def test_a_rank_dict_that_names_no_layer_of_the_model_is_refused():
    """With layers given, a rank dict's other names were ignored, a typo among them too."""
    calib = [embeddings(128, 48, seed=0)]
    with pytest.raises(ValueError, match=r"not nn.Linear layers of the model: \['porj'\]"):
        compress_model(Head(), calib, layers=["proj"], rank={"proj": 4, "porj": 4})
    model = Head()  # a layer of the model left out of `layers` may keep its rank in the dict
    reports = compress_model(model, calib, layers=["proj"], rank={"proj": 4, "out": 2})
    assert [r.name for r in reports] == ["proj"] and isinstance(model.out, nn.Linear)
