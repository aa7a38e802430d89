"""I-MoF on the MMVP repository's real LLaVA fork (environment ``imof``: transformers 4.44).

The model is the fork's own ``LlavaLlamaForCausalLM`` with its real ``CLIPVisionTower``
and ``DINOVisionTower``, DINOv2 built by the real hub code of the registered dinov2 clone; only
sizes are tiny and weights random (see model_wrappers/imof/selftest.py).  Replaced
because they cannot exist here: the CLIP checkpoint behind the fork's hard-coded hub id
(a random tiny CLIP in a throw-away offline hub cache) and DINOv2's pretrained weights
(the hub entry built with ``pretrained=False``, cut to one block).  The VLMEvalKit tests
load a saved tiny checkpoint through ``vlmeval.config.supported_VLM`` on the CPU, with
the wrapper's test-only ``device='cpu'`` / ``dtype='float32'``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vlmeval_encred.masking import MaskSpec
from vlmeval_encred.model_wrappers.imof import ADAPTER, ReleasedTower
from vlmeval_encred.model_wrappers.imof import selftest as rc
from vlmeval_encred.upstream import source_dir

pytestmark = [pytest.mark.envs("imof"), pytest.mark.realcode("mmvp", "dinov2")]


@pytest.fixture(scope="module", autouse=True)
def fork():
    """The fork imported (through the compat layer) only when these tests run, not at collection."""
    from vlmeval_encred.model_wrappers.imof.compat import import_fork

    from conftest import need_sources

    need_sources("mmvp", "dinov2")
    return import_fork()


ST = rc.SELFTEST
T, N = 7, ST.sizes.tokens  # prompt length (one image placeholder), tokens per tower


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("imof")


@pytest.fixture(scope="module")
def tiny(workdir):
    return ST.build(workdir)


def _masked(model, names, mode):
    m = copy.deepcopy(model)
    ADAPTER.apply(m, MaskSpec(tuple(names), mode), "imof-tiny")
    return m


_DEFAULT = object()


def _logits(model, ids=None, attn=None, images=_DEFAULT):
    d_ids, d_attn, d_images = ST.inputs()
    with torch.no_grad():
        return model(input_ids=d_ids if ids is None else ids, attention_mask=d_attn if attn is None else attn,
                     images=d_images if images is _DEFAULT else images).logits


def test_selftest_every_subset_and_mode(workdir):
    """The checks `encred doctor` runs: 3 subsets x (zero, drop), nothing failing."""
    from vlmeval_encred.realcode import load_selftest
    from vlmeval_encred.realcode.checks import run_selftest

    results = run_selftest(load_selftest("imof"), workdir / "selftest")
    failed = [r.line() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
    ran = {r.subject for r in results if r.check == "not_called"}
    assert ran == {f"mask={s} mode={m}" for s in ("clip", "dinov2", "clip,dinov2") for m in ("zero", "drop")}
    assert sum(r.check == "zero_equals_run_then_zero" for r in results) == 3


def test_compat_layer_changes_only_what_it_says():
    import llava
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.model import LlavaConfig, LlavaLlamaForCausalLM, LlavaMPTForCausalLM
    from vlmeval_encred.model_wrappers.imof import compat as llava_fork
    from vlmeval_encred.model_wrappers import imof

    assert Path(llava.__file__).parent.parent == Path(source_dir("mmvp")) / "LLaVA"
    # transformers keeps its own `llava`; the fork's class still carries its config class
    assert CONFIG_MAPPING["llava"].__module__.startswith("transformers.") and AutoConfig.for_model("llava")
    assert LlavaLlamaForCausalLM.config_class is LlavaConfig and LlavaConfig.model_type == "llava"
    assert any("AutoConfig.register('llava'" in s for s in llava_fork.skipped_registrations)
    with pytest.raises(ImportError, match="transformers 4.31"):
        LlavaMPTForCausalLM.from_pretrained("x")
    assert (imof.IMAGE_TOKEN_INDEX, imof.IGNORE_INDEX) == (IMAGE_TOKEN_INDEX, IGNORE_INDEX)


def test_fork_alone_crashes_on_zero_image_tokens(tiny):
    """Upstream bug the adapter works around: the fork's single-tower path given zero image
    tokens leaves the sequence one short of its attention-mask padding."""
    m = copy.deepcopy(tiny)
    m.encode_images = lambda images: images.new_zeros(images.shape[0], 0, m.config.hidden_size)
    m.prepare_inputs_labels_for_multimodal_withdino = m.prepare_inputs_labels_for_multimodal
    with pytest.raises(RuntimeError, match="negative dimension"):
        _logits(m)


def test_drop_both_is_the_prompt_as_text(tiny):
    """drop with both towers masked == the unmasked fork fed the prompt without its placeholder."""
    ids, attn, _ = ST.inputs()
    text_ids = ids[:, [i for i in range(T) if i != 3]]
    want = _logits(tiny, text_ids, torch.ones_like(text_ids), None)
    m = _masked(tiny, ("clip", "dinov2"), "drop")
    got = _logits(m)
    assert got.shape == (2, T - 1, ST.sizes.vocab) and torch.equal(got, want)
    # and generate (prefill + cached steps) runs and depends on the text only
    with torch.no_grad():
        a = m.generate(ids, attention_mask=attn, images=ST.inputs()[2], max_new_tokens=3, do_sample=False,
                       pad_token_id=0)
        b = m.generate(ids, attention_mask=attn, images=torch.zeros_like(ST.inputs()[2]), max_new_tokens=3,
                       do_sample=False, pad_token_id=0)
    assert torch.equal(a, b) and a.shape == (2, T + 3)


@pytest.mark.parametrize("mode,tokens", [("zero", 2 * N), ("drop", N)])
def test_one_tower_masked_token_counts(tiny, mode, tokens):
    full = _logits(tiny)
    for name in ("clip", "dinov2"):
        out = _logits(_masked(tiny, (name,), mode))
        assert out.shape[1] == T - 1 + tokens, (mode, name)
        assert out.shape != full.shape or not torch.equal(out, full), (mode, name)


# --- through VLMEvalKit ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ck(workdir):
    return rc.save_tiny_checkpoint(workdir / "MoF_tiny")


@pytest.fixture(scope="module")
def hub(workdir):
    with rc.tiny_environment(workdir) as cache:
        yield cache


@pytest.fixture(scope="module")
def image(workdir) -> str:
    import numpy as np
    from PIL import Image

    path = workdir / "img.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(path)
    return str(path)


def _load(name, ck, **kw):
    from vlmeval.config import supported_VLM

    return supported_VLM[name](model_path=str(ck), device="cpu", **kw)


def test_vlmevalkit_entry_loads_masked_on_cpu(ck, hub, image):
    """supported_VLM['imof_13b_mask_dinov2']: the fork's own builder, DINOv2 never built, answers."""
    import transformers

    model = _load("imof_13b_mask_dinov2", ck, max_new_tokens=4)
    assert transformers.__version__.startswith("4.44")
    lm = model.model.get_model()
    assert type(model.model).__module__ == "llava.model.language_model.llava_llama"
    assert isinstance(lm.dino_tower, ReleasedTower) and type(lm.vision_tower).__name__ == "CLIPVisionTower"
    assert model.encred_report.spec.masked == ("dinov2",) and model.encred_report.released_params > 0
    assert model.model.dtype == torch.float16  # the fork's builder loads float16
    msg = [{"type": "image", "value": image}, {"type": "text", "value": "Which option? A. cat B. dog"}]
    answer = model.generate(msg)
    assert isinstance(answer, str)


SUBSETS = [(), ("clip",), ("dinov2",), ("clip", "dinov2")]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def variants(ck, hub):
    """mode -> the four entries of imof_13b loaded through supported_VLM (fp32, CPU, plain greedy), loaded once."""
    from vlmeval_encred.registry import get_base

    base = get_base("imof_13b")
    loaded: dict[str, list] = {}

    def get(mode: str) -> list:
        if mode not in loaded:
            loaded[mode] = [_load(base.entry_name(s), ck, dtype="float32", mask_mode=mode,
                                  max_new_tokens=NEW_TOKENS) for s in SUBSETS]
        return loaded[mode]
    return get


# (mode, batched, generation) -> per prompt: rows of each generate() call ("generate" path) or of
# each shared-prefix decoder call ("decode" path: plain greedy settings).
_SWEEP_CASES = {
    ("zero", True, "greedy"): ("decode", [4]),
    ("drop", True, "greedy"): ("decode", [1, 2, 1]),
    ("zero", False, "greedy"): ("decode", [1, 1, 1, 1]),
    ("zero", True, "min_new_tokens"): ("generate", [4]),
    ("drop", True, "min_new_tokens"): ("generate", [1, 2, 1]),
}


@pytest.mark.parametrize("mode,batched,generation", list(_SWEEP_CASES))
def test_sweep_support_equals_per_variant_generate(variants, image, mode, batched, generation, monkeypatch):
    """Greedy, fp32, CPU: the sweep's answers equal each masked variant's generate_inner, for every
    subset.  Plain greedy settings decode through the shared-prefix decoder (sweep.decoding), whose
    prefix (the chat template before the image) really is run once per batch; min_new_tokens is not
    plain greedy, so the fork's generate() runs (batched over same-layout subsets, or one by one)."""
    from vlmeval_encred.sweep import decoding
    from vlmeval_encred.sweep.protocol import support_for

    loaded = variants(mode)
    if generation == "min_new_tokens":
        for v in loaded:
            monkeypatch.setitem(v.gen_kwargs, "min_new_tokens", NEW_TOKENS)
    full = loaded[0]
    support = support_for(full)
    monkeypatch.setattr(support, "batched", batched)
    path, per_prompt = _SWEEP_CASES[(mode, batched, generation)]
    gen_rows, dec_rows, stats = [], [], []
    real_generate, real_decode = full.model.generate, decoding.decode
    monkeypatch.setattr(full.model, "generate", lambda *a, **k: gen_rows.append(a[0].shape[0]) or real_generate(*a, **k))
    monkeypatch.setattr(decoding, "decode",  # rows of each request the shared-prefix decoder gets
                        lambda reqs, *a, **k: dec_rows.extend(r.rows for r in reqs) or real_decode(reqs, *a, **k))
    answers = []
    for q in ("Which option? A. cat B. dog", "What colour is the page?"):
        msg = [{"type": "image", "value": image}, {"type": "text", "value": q}]
        inputs = support.prepare(full, msg, None)
        feats = support.encode(full, inputs, ["clip", "dinov2"])
        per_subset = [{n: None if n in s else feats[n] for n in ("clip", "dinov2")} for s in SUBSETS]
        gen_rows.clear()
        dec_rows.clear()
        with decoding.collect() as st:
            got = support.fuse_and_generate(full, inputs, per_subset, mode)
        assert (gen_rows if path == "generate" else dec_rows) == per_prompt
        assert (dec_rows if path == "generate" else gen_rows) == []
        want = [v.generate_inner(msg) for v in loaded]
        assert got == want, (mode, q)
        stats.append(st)
        answers += got
    assert len(set(answers)) > 1, "answers do not depend on subset/prompt: the comparison would be vacuous"
    if path == "decode" and max(per_prompt) > 1:  # the template before the image is shared by the subsets
        assert all(st.prefix_tokens > 0 and st.prefilled_tokens < st.prompt_tokens for st in stats), stats


def test_sweep_fuse_is_the_decode_request_of_fuse_and_generate(variants, image, monkeypatch):
    """fuse() stops before decoding; decode([fuse(...)]) is what fuse_and_generate answers.  It is
    refused, with the reason, where one request cannot hold the subsets (drop mode's three layouts)
    or greedy decoding would not be the wrapper's generation (min_new_tokens)."""
    from vlmeval_encred.sweep.decoding import DecodeRequest, decode
    from vlmeval_encred.sweep.protocol import support_for

    msg = [{"type": "image", "value": image}, {"type": "text", "value": "Which option? A. cat B. dog"}]
    for mode in ("zero", "drop"):
        full = variants(mode)[0]
        support = support_for(full)
        inputs = support.prepare(full, msg, None)
        feats = support.encode(full, inputs, ["clip", "dinov2"])
        per_subset = [{n: None if n in s else feats[n] for n in ("clip", "dinov2")} for s in SUBSETS]
        if mode == "drop":
            with pytest.raises(ValueError, match="different lengths"):
                support.fuse(full, inputs, per_subset, mode)
            continue
        req = support.fuse(full, inputs, per_subset, mode)
        assert isinstance(req, DecodeRequest) and req.embeds.shape[:2] == (4, _text_len(inputs) + 2 * N)
        assert decode([req])[0] == support.fuse_and_generate(full, inputs, per_subset, mode)
        monkeypatch.setitem(full.gen_kwargs, "min_new_tokens", 2)
        with pytest.raises(ValueError, match="min_new_tokens=2"):
            support.fuse(full, inputs, per_subset, mode)


def _text_len(inputs) -> int:
    """Prompt ids without the image placeholder."""
    return int(inputs["input_ids"].shape[1]) - 1


def test_sweep_engine_equals_vlmevalkit_inference(variants, tmp_path, monkeypatch):
    """`encred sweep`'s engine on a VLMEvalKit dataset vs VLMEvalKit's own infer_data_job per variant."""
    from conftest import write_mcq_tsv
    from vlmeval.dataset import build_dataset
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import load

    from vlmeval_encred.registry import entries, get_base
    from vlmeval_encred.sweep.engine import run_sweep

    ds = "EncredIMoF_MCQ"
    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    write_mcq_tsv(lmu / f"{ds}.tsv", n=2)
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("PRED_FORMAT", "xlsx")
    base = get_base("imof_13b")
    chosen = entries(base="imof_13b")
    loaded = variants("zero")
    rep = run_sweep(base, chosen, [ds], str(tmp_path / "sweep"), progress=False, model=loaded[0])
    assert rep.datasets[0].encoder_calls == {"clip": 2, "dinov2": 2}
    by_name = {base.entry_name(s): v for s, v in zip(SUBSETS, loaded)}
    for e in chosen:
        work = tmp_path / "ref" / e.name
        work.mkdir(parents=True)
        infer_data_job(by_name[e.name], work_dir=str(work), model_name=e.name, dataset=build_dataset(ds))
        got = load(str(tmp_path / "sweep" / e.name / f"{e.name}_{ds}.xlsx"))
        want = load(str(work / f"{e.name}_{ds}.xlsx"))
        assert list(got["prediction"]) == list(want["prediction"]), e.name
