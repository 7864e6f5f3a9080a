"""The gradient cache's step equals one plain forward/backward over the whole global batch (trainer/training/gradcache.py)."""

import textwrap
from dataclasses import replace

import pytest
import torch

from tests.trainer.conftest import run_two_gloo_ranks
from trainer.modeling.model import TraceModel
from trainer.training.config import TINY_DEFAULTS, TrainConfig
from trainer.training.data import TrainData
from trainer.training.gradcache import make_chunk, train_step
from trainer.training.loss import contrastive_ce, info_nce, same_candidate_mask
from trainer.training.step import TrainStep

GLOBAL = 16
MAX_REL = 1e-4  # the bound, float32 on CPU
CFG = replace(TrainConfig(), **{**TINY_DEFAULTS, "global_batch": GLOBAL})


def global_batch(data_dir: str, root: str):
    """A cirr batch (image + text queries, reasoning targets of unequal length); rows 1 and 9 (on different
    ranks at world size 2) share one positive, so the same-candidate mask has to cross ranks."""
    data = TrainData(data_dir, GLOBAL, seed=0, mbeir_root=root)
    fams = data.index.families
    rows = next(b for b in data.sampler.plan(0) if fams[b[0]] == "cirr/7" and len(b) == GLOBAL)
    examples = [data.decode(r) for r in data.index.rows(rows)]
    examples[9] = replace(examples[9], candidate=examples[1].candidate, cand_key=examples[1].cand_key)
    return examples


def embedder(tiny_base: str, **kw) -> TraceModel:
    args = {"lora_r": 0, "train_vision": True, "max_text_tokens": 96, "max_target_tokens": 32, **kw}
    return TraceModel.from_base(tiny_base, device="cpu", **args).train()


def plain_step(emb: TraceModel, examples, cfg: TrainConfig) -> dict:
    """The reference: one forward and backward over the whole global batch."""
    ch = make_chunk(emb, examples)
    q, c, ce, route = TrainStep(emb)(ch.q, ch.c)
    nce = contrastive_ce(q, c, cfg.temperature, 0, same_candidate_mask(ch.keys))
    loss = cfg.ce_weight * ce + cfg.nce_weight * nce + cfg.route_weight * route
    loss.backward()
    return {k: float(v.detach()) for k, v in (("loss", loss), ("ce", ce), ("nce", nce), ("route", route))}


def grads(emb: TraceModel) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in emb.named_parameters() if p.grad is not None}
    emb.zero_grad(set_to_none=True)
    return out


def max_rel_diff(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Max over parameter tensors of max |got - ref| / max |ref|."""
    assert got.keys() == ref.keys()
    return max(float((got[n] - r).abs().max() / r.abs().max()) for n, r in ref.items() if r.abs().max() > 0)


def assert_parts_close(got: dict, ref: dict) -> None:
    for k in ("loss", "ce", "nce", "route"):
        assert abs(got[k] - ref[k]) <= MAX_REL * abs(ref[k]), (k, got[k], ref[k])


@pytest.fixture(scope="module")
def batch(sample_cot, sample_root):
    return global_batch(sample_cot, sample_root)


@pytest.fixture(scope="module")
def reference(tiny_base, batch):
    torch.set_num_threads(1)
    emb = embedder(tiny_base)
    parts = plain_step(emb, batch, CFG)
    return emb, parts, grads(emb)


@pytest.mark.parametrize("micro", [GLOBAL, GLOBAL // 4])
def test_cached_step_equals_one_big_batch_step(reference, batch, micro):
    emb, ref_parts, ref_grads = reference
    parts = train_step(TrainStep(emb), emb, batch, replace(CFG, micro_batch=micro))
    assert (d := max_rel_diff(grads(emb), ref_grads)) <= MAX_REL, d
    assert_parts_close(parts, ref_parts)
    assert parts["nce_candidates"] == GLOBAL and parts["rows"] == GLOBAL


def test_dropout_is_replayed_in_the_second_pass(tiny_base, batch):
    """With LoRA dropout the second pass must draw the first pass's masks, else the cached embedding
    gradients belong to other activations."""
    torch.set_num_threads(1)
    emb = embedder(tiny_base, lora_r=4, lora_alpha=8, lora_dropout=0.3)
    torch.manual_seed(1)
    ref_parts, ref_grads = plain_step(emb, batch, CFG), grads(emb)
    torch.manual_seed(1)
    parts = train_step(TrainStep(emb), emb, batch, replace(CFG, micro_batch=GLOBAL))
    assert (d := max_rel_diff(grads(emb), ref_grads)) <= MAX_REL, d
    assert_parts_close(parts, ref_parts)


def test_negatives_micro_scores_each_micro_batch_alone(reference, batch):
    emb = reference[0]
    parts = train_step(TrainStep(emb), emb, batch, replace(CFG, micro_batch=GLOBAL // 2, negatives="micro"))
    emb.zero_grad(set_to_none=True)
    with torch.no_grad():
        halves = [make_chunk(emb, batch[s:s + GLOBAL // 2]) for s in (0, GLOBAL // 2)]
        nce = [info_nce(*TrainStep(emb)(h.q, h.c)[:2], CFG.temperature, same_candidate_mask(h.keys))
               for h in halves]
    assert parts["nce_candidates"] == GLOBAL // 2
    assert abs(parts["nce"] - float(sum(nce)) / 2) <= MAX_REL * parts["nce"]
    assert parts["nce"] < reference[1]["nce"]  # fewer candidates in each denominator


@pytest.mark.parametrize("negatives", ["global", "micro"])
def test_a_step_without_rows_contributes_nothing(reference, negatives):
    """A rank whose rows were all skipped still takes part in the step (DDP needs its backward)."""
    emb = reference[0]
    parts = train_step(TrainStep(emb), emb, [], replace(CFG, negatives=negatives))
    assert parts["rows"] == 0 and parts["loss"] == 0
    assert all(float(g.abs().max()) == 0 for g in grads(emb).values())


def test_bad_negatives_value_names_the_flag(reference, batch):
    emb = reference[0]
    with pytest.raises(ValueError, match="--negatives"):
        train_step(TrainStep(emb), emb, batch, replace(CFG, negatives="local"))


RANK_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from dataclasses import replace
    from torch.nn.parallel import DistributedDataParallel
    from tests.trainer.training.test_gradcache import CFG, GLOBAL, embedder, global_batch
    from trainer.training.data import rank_share
    from trainer.training.gradcache import train_step
    from trainer.training.step import TrainStep
    out, tiny_base, data_dir, root, r = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + out + "/rendezvous", rank=r, world_size=2)
    emb = embedder(tiny_base)
    mine = rank_share(global_batch(data_dir, root), r, 2)
    parts = train_step(DistributedDataParallel(TrainStep(emb)), emb, mine, replace(CFG, micro_batch=GLOBAL // 4))
    grads = {n: p.grad for n, p in emb.named_parameters() if p.grad is not None}
    torch.save({"parts": parts, "grads": grads}, out + f"/rank{r}.pt")
    dist.barrier()  # gloo aborts (SIGABRT) about 1 run in 50 when one rank tears down mid-collective
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_equal_one_big_batch_step(reference, tiny_base, sample_cot, sample_root, tmp_path):
    _, ref_parts, ref_grads = reference
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    args = [str(tmp_path), str(tiny_base), sample_cot, sample_root]
    run_two_gloo_ranks(tmp_path / "rank.py", args, timeout=300)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert (d := max_rel_diff(got["grads"], ref_grads)) <= MAX_REL, d  # DDP's averaged gradients, on each rank
        assert_parts_close(got["parts"], ref_parts)
        assert got["parts"]["nce_candidates"] == GLOBAL
