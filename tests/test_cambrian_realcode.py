"""Cambrian-1 masking on upstream's *real* classes (cambrian-mllm/cambrian 539ffc3).

``encred doctor``'s check, run here: a tiny random ``CambrianLlamaForCausalLM`` whose
four towers (SigLIP and ConvNeXt through open_clip/timm, CLIP and DINOv2 through
transformers) load from a local fake hub cache under their upstream repository ids,
compared through upstream's ``generate()`` (the only path that feeds the SVA layers
inside the LLM).  Every subset of the four towers x zero/zero_context/drop.
Needs the ``cambrian`` environment (transformers 4.37): ``bash scripts/env.sh --env
cambrian python -m pytest -q tests/test_cambrian_realcode.py``.
"""

from __future__ import annotations

import pytest

from conftest import real_selftest

pytestmark = [pytest.mark.envs("cambrian"), pytest.mark.realcode("cambrian")]


@pytest.fixture(scope="module")
def selftest():
    return real_selftest("cambrian")


def test_every_subset_and_mode_matches_the_authors_masking(selftest, tmp_path_factory):
    from vlmeval_encred.realcode.checks import run_selftest

    results = run_selftest(selftest, tmp_path_factory.mktemp("cambrian"))
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    by_check = {}
    for r in results:
        by_check[r.check] = by_check.get(r.check, 0) + 1
    # 15 subsets x 3 modes, each checked for silence and freed parameters; 15 zero runs
    # compared with the authors' run-then-zero.
    assert by_check["not_called"] == 45 and by_check["params_freed"] == 45
    assert by_check["zero_equals_run_then_zero"] == 15
    exempt = [r for r in results if r.check == "not_called" and "runs by design" in r.detail]
    assert len(exempt) == 8 and all("mode=zero" in r.subject and "siglip" in r.subject for r in exempt)


def test_the_selftest_detects_a_wrong_mask(selftest, tmp_path_factory):
    """The comparison can fail: masking clip while the reference zeroes dinov2 is caught."""
    from vlmeval_encred.realcode.checks import compare

    base = selftest.build(tmp_path_factory.mktemp("cambrian-neg"))
    masked = selftest.fresh(base)
    selftest.mask(masked, ("clip",), "zero")
    ok, _ = compare(selftest.run(masked), selftest.run_then_zero(selftest.fresh(base), ("dinov2",)))
    assert not ok
    ok, why = compare(selftest.run(masked), selftest.run_then_zero(selftest.fresh(base), ("clip",)))
    assert ok, why


# --- VLMEvalKit's real Cambrian wrapper and ours, on a saved tiny checkpoint -------------------
# VLMEvalKit's ``Cambrian`` and upstream's builder/process_images are GPU-only: they load with
# device_map="cuda", call ``.cuda()``/``.half()`` and ``.to(device="cuda")``.  No GPU exists
# here, so ``gpu_calls_on_cpu`` redirects exactly those calls to the CPU (and ``.half()`` to
# float32, for exact comparisons); the code that runs is otherwise theirs, unmodified.

import contextlib
import copy

MESSAGE_TEXT = "What is in the picture?"


@contextlib.contextmanager
def gpu_calls_on_cpu():
    import torch

    import cambrian.model.builder as builder

    originals = (torch.Tensor.cuda, torch.Tensor.half, torch.Tensor.to, builder.load_pretrained_model)

    def on_cpu(device):
        return "cpu" if device is not None and str(device).startswith("cuda") else device

    def to(self, *args, **kwargs):
        args = tuple(on_cpu(a) if isinstance(a, (str, torch.device)) else a for a in args)
        if "device" in kwargs:
            kwargs["device"] = on_cpu(kwargs["device"])
        return originals[2](self, *args, **kwargs)

    def load_pretrained_model(*args, **kwargs):
        kwargs.update(device_map="cpu", device="cpu")
        tokenizer, model, processors, n = originals[3](*args, **kwargs)
        model.float()
        for tower in model.get_vision_tower_aux_list():
            tower.float()
        return tokenizer, model, processors, n

    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.half = lambda self, *a, **k: self.float()
    torch.Tensor.to = to
    builder.load_pretrained_model = load_pretrained_model
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.half, torch.Tensor.to, builder.load_pretrained_model = originals


@pytest.fixture(scope="module")
def checkpoints(selftest, tmp_path_factory):
    """Tiny checkpoints named like the released ones (the wrappers choose templates by name)."""
    from vlmeval_encred.model_wrappers.cambrian.tiny import save_tiny_checkpoint, write_fake_hub

    root = tmp_path_factory.mktemp("cambrian-ckpt")
    hub = write_fake_hub(root / "hf-hub")
    return hub, {
        "8b": save_tiny_checkpoint(root / "cambrian-8b", hub, "llama", "llama_3"),
        "phi3": save_tiny_checkpoint(root / "cambrian-phi3-3b", hub, "phi3", "phi3"),
    }


@pytest.fixture(scope="module")
def message(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.new("RGB", (64, 40), (200, 30, 30)).save(path)
    return [{"type": "image", "value": str(path)}, {"type": "text", "value": MESSAGE_TEXT}]


def _load(cls_name, path, hub, **kwargs):
    from vlmeval_encred.model_wrappers.cambrian.tiny import offline_hub

    with offline_hub(hub), gpu_calls_on_cpu():
        if cls_name == "Cambrian":
            from vlmeval.vlm.cambrian import Cambrian

            return Cambrian(model_path=str(path))
        from vlmeval_encred.model_wrappers.cambrian import EncredCambrian

        return EncredCambrian(model_path=str(path), **kwargs)


def _answer(wrapper, message):
    with gpu_calls_on_cpu():
        return wrapper.generate_inner(message)


@pytest.fixture(scope="module")
def ours_8b(checkpoints):
    hub, paths = checkpoints
    return _load("EncredCambrian", paths["8b"], hub, max_new_tokens=6)


def test_vlmevalkit_cambrian_and_ours_agree_unmasked(checkpoints, message, ours_8b):
    hub, paths = checkpoints
    theirs = _load("Cambrian", paths["8b"], hub)
    theirs.model.generation_config.max_new_tokens = 6
    assert theirs.conv_mode == ours_8b.conv_mode == "llama_3"
    # VLMEvalKit's generate_inner asks for 2048 new tokens: compare on its own first 6
    with gpu_calls_on_cpu():
        ids, images, sizes, _ = theirs.process(__import__("PIL.Image").Image.open(message[0]["value"]).convert("RGB"),
                                               MESSAGE_TEXT)
        out = theirs.model.generate(ids, images=images, image_sizes=sizes, do_sample=False, num_beams=1,
                                    max_new_tokens=6, use_cache=True)
    want = theirs.tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip()
    assert _answer(ours_8b, message) == want


def test_phi3_gets_its_trained_template(checkpoints):
    """VLMEvalKit's own wrapper gives cambrian-phi3-3b 'chatml_direct'; upstream trained it with 'phi3'."""
    hub, paths = checkpoints
    assert _load("Cambrian", paths["phi3"], hub).conv_mode == "chatml_direct"
    ours = _load("EncredCambrian", paths["phi3"], hub, max_new_tokens=2, mask=("siglip", "convnext"),
                 mask_mode="drop")
    assert ours.conv_mode == "phi3"
    assert type(ours.model).__name__ == "CambrianPhi3ForCausalLM"
    assert ours.encred_report.spec.masked == ("siglip", "convnext")
    prompt_ids = None
    with gpu_calls_on_cpu():
        from PIL import Image

        prompt_ids = ours.process(Image.new("RGB", (40, 40)), MESSAGE_TEXT)[0][0].tolist()
    # the image token sits where the checkpoint's in-LLM SVA reads it
    assert prompt_ids.index(-200) == ours.model.config.image_position
    message = [{"type": "image", "value": str(paths["phi3"] / "img.png")}, {"type": "text", "value": MESSAGE_TEXT}]
    Image.new("RGB", (40, 64), (0, 90, 200)).save(message[0]["value"])
    assert isinstance(_answer(ours, message), str)  # upstream's phi3 model generates with two towers dropped


def _variant(wrapper, masked, mode):
    """The wrapper as loading entry <base>_mask_<masked> in ``mode`` gives it (the mask is applied
    after loading, as EncredCambrian.__init__ does), on a copy sharing the towers."""
    from vlmeval_encred.masking import MaskSpec
    from vlmeval_encred.model_wrappers.cambrian import ADAPTER

    w = copy.copy(wrapper)
    w.model = copy.deepcopy(wrapper.model, memo={id(t): t for t in wrapper.model.get_vision_tower_aux_list()})
    ADAPTER.apply(w.model, MaskSpec(tuple(masked), mode), "tiny")
    return w


def _early_stop_token(rows, max_new_tokens, eos_ids):
    """A token that ends some answers before the last step but not all of them, so that the
    decoder drops finished rows (the random model emits its own end-of-sequence token rarely)."""
    for tok in sorted({t for r in rows for t in r[:max_new_tokens - 2]} - set(eos_ids)):
        if any(tok not in r for r in rows):
            return tok
    raise AssertionError(f"no early-stop token in {rows}")


@pytest.mark.parametrize("mode", ["zero", "zero_context", "drop"])
def test_sweep_equals_per_variant_runs(ours_8b, message, mode, monkeypatch):
    """Greedy sweep answers (encoders once, the subsets fused by upstream's code and decoded by
    the shared-prefix decoder: template prefix run once, finished rows dropped) equal each
    variant's own generate_inner, string for string, fp32 on the CPU, for all 16 subsets; so
    do the answers of the generate() path the family keeps for non-greedy settings."""
    import itertools

    from vlmeval_encred.sweep.decoding import collect, greedy_subsets
    from vlmeval_encred.sweep.protocol import support_for

    names = ["siglip", "clip", "dinov2", "convnext"]
    subsets = [s for k in range(len(names) + 1) for s in itertools.combinations(names, k)]
    support = support_for(ours_8b)
    with gpu_calls_on_cpu():
        inputs = support.prepare(ours_8b, message, None)
        feats = support.encode(ours_8b, inputs, names)
        per_subset = [{n: (None if n in s else feats[n]) for n in names} for s in subsets]
        req = support.fuse(ours_8b, inputs, per_subset, mode)
        stop = _early_stop_token(greedy_subsets(req.lm, req.embeds, req.embed_tokens, req.eos_ids,
                                                req.max_new_tokens), req.max_new_tokens, req.eos_ids)
        # the variants below are copies made after this: they stop on the same tokens
        monkeypatch.setattr(ours_8b.model.generation_config, "eos_token_id", [2, stop])
        with collect() as stats:
            swept = support.fuse_and_generate(ours_8b, inputs, per_subset, mode)
        generated = support._generate(ours_8b, inputs, per_subset, mode)
    want = [_answer(_variant(ours_8b, s, mode), message) for s in subsets]
    assert swept == want
    assert generated == want
    assert len(set(want)) > 1  # the subsets do change the answers of this random model
    # the chat template before the image was run once for all 16 rows; rows left early
    assert stats.calls == 1 and stats.rows == 16 and stats.prefix_tokens > 0
    assert stats.prefix_tokens <= ours_8b.model.config.image_position  # the SVA reads the image per row
    assert stats.prefilled_tokens < stats.prompt_tokens and stats.rows_dropped_early > 0


def test_encred_sweep_engine_on_cambrian(ours_8b, tmp_path, monkeypatch):
    """`encred sweep`'s engine with the Cambrian support on a 2-question VLMEvalKit dataset: its
    prediction files hold, row for row, what each variant's generate_inner answers to the message
    VLMEvalKit builds; each tower ran once per question."""
    import pandas as pd
    from conftest import write_mcq_tsv
    from vlmeval.dataset import build_dataset
    from vlmeval.smp import load

    from vlmeval_encred.registry import Entry, get_base
    from vlmeval_encred.sweep import predfiles
    from vlmeval_encred.sweep.engine import build_message, run_sweep

    ds = "EncredCambrianSweep_MCQ"
    write_mcq_tsv(tmp_path / f"{ds}.tsv", n=2)
    monkeypatch.setenv("LMUData", str(tmp_path))
    monkeypatch.setenv("PRED_FORMAT", "json")  # the random model emits control characters xlsx refuses
    base = get_base("cambrian1_8b")
    chosen = [Entry(base, ()), Entry(base, ("siglip",)), Entry(base, ("clip", "dinov2", "convnext"))]
    with gpu_calls_on_cpu():
        report = run_sweep(base, chosen, [ds], str(tmp_path / "sweep"), progress=False, model=ours_8b)
    rep = report.datasets[0]
    assert rep.encoder_calls == {"siglip": 2, "clip": 2, "dinov2": 2, "convnext": 2} and rep.decode_calls == 2
    dataset = build_dataset(ds)
    for entry in chosen:
        got = pd.DataFrame(load(predfiles.pred_file(str(tmp_path / "sweep"), entry.name, ds)))
        variant = _variant(ours_8b, entry.masked, "zero")
        for pos in range(len(dataset.data)):
            line = dataset.data.iloc[pos]
            want = _answer(variant, build_message(variant, dataset, line))
            assert str(got[got["index"] == line["index"]]["prediction"].iloc[0]) == want, (entry.name, pos)
