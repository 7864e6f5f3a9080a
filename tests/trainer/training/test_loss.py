import textwrap

import torch
import torch.nn.functional as F

from tests.trainer.conftest import run_two_gloo_ranks
from trainer.modeling.processor import IGNORE
from trainer.training.loss import info_nce, route_ce, target_ce, trace_loss


def test_target_ce_equals_full_vocabulary_ce_restricted_to_targets():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 7, 16)
    labels = torch.full((3, 7), IGNORE)
    labels[0, 4:] = torch.tensor([5, 6, 49])
    labels[1, 6] = 49
    labels[2, 2:5] = torch.tensor([1, 2, 49])
    ce, n = target_ce(hidden, labels, head)
    full = F.cross_entropy(head(hidden)[:, :-1].reshape(-1, 50), labels[:, 1:].reshape(-1), ignore_index=IGNORE)
    assert n == 7
    torch.testing.assert_close(ce, full)


def test_route_ce_scores_each_rows_first_target_token_once():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 7, 16)
    labels = torch.full((3, 7), IGNORE)
    labels[0, 2:] = torch.tensor([5, 6, 7, 8, 49])  # long reasoning target: only token 5 at position 2 counts
    labels[1, 6] = 49  # direct row: <|emb|> right after the prompt
    expected = F.cross_entropy(head(torch.stack([hidden[0, 1], hidden[1, 5]])), torch.tensor([5, 49]))
    torch.testing.assert_close(route_ce(hidden, labels, head), expected)  # row 2 has no target: skipped
    assert route_ce(hidden, torch.full((3, 7), IGNORE), head) == 0


def test_info_nce_is_cross_entropy_over_in_batch_candidates():
    torch.manual_seed(0)
    q, c = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    expected = F.cross_entropy(q @ c.T / 0.05, torch.arange(4))
    torch.testing.assert_close(info_nce(q, c, 0.05), expected)
    assert info_nce(q, q.clone(), 0.05) < info_nce(q, c, 0.05)


def test_trace_loss_weights_its_parts():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20)
    hidden, labels = torch.randn(2, 5, 8), torch.full((2, 5), IGNORE)
    labels[:, -1] = 3
    q, c = F.normalize(torch.randn(2, 8), dim=-1), F.normalize(torch.randn(2, 8), dim=-1)
    parts = trace_loss(q, c, hidden, labels, head, temperature=0.1, ce_weight=0.5, nce_weight=2.0)
    torch.testing.assert_close(parts.total, 0.5 * parts.ce + 2.0 * parts.nce)
    assert parts.n_target_tokens == 2


def test_negatives_are_gathered_across_ranks_with_gradients(tmp_path):
    """Two gloo ranks with unequal batch sizes: loss and gradients equal the single-process computation."""
    script = textwrap.dedent("""
        import os, sys, torch, torch.distributed as dist, torch.nn.functional as F
        from trainer.training.loss import info_nce
        r = int(sys.argv[2])
        dist.init_process_group("gloo", init_method="file://" + sys.argv[1] + "/rendezvous", rank=r, world_size=2)
        torch.manual_seed(0)
        q_all, c_all = torch.randn(5, 6), torch.randn(5, 6)
        rows = [slice(0, 3), slice(3, 5)][r]
        q = q_all[rows].clone().requires_grad_(True)
        c = c_all[rows].clone().requires_grad_(True)
        loss = info_nce(F.normalize(q, dim=-1), F.normalize(c, dim=-1), 0.05)
        loss.backward()
        torch.save({"loss": loss.detach(), "gq": q.grad, "gc": c.grad}, sys.argv[1] + f"/rank{r}.pt")
        dist.barrier()  # gloo aborts (SIGABRT) about 1 run in 50 when one rank tears down mid-collective
        dist.destroy_process_group()
    """)
    (tmp_path / "run.py").write_text(script)
    run_two_gloo_ranks(tmp_path / "run.py", [str(tmp_path)], timeout=120)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(0)
    q_all = torch.randn(5, 6).requires_grad_(True)
    c_all = torch.randn(5, 6).requires_grad_(True)
    qn, cn = F.normalize(q_all, dim=-1), F.normalize(c_all, dim=-1)
    logits = qn @ cn.T / 0.05
    per_rank = [F.cross_entropy(logits[:3], torch.arange(3)), F.cross_entropy(logits[3:], torch.arange(3, 5))]
    torch.testing.assert_close(r0["loss"], per_rank[0].detach())
    torch.testing.assert_close(r1["loss"], per_rank[1].detach())
    # Each rank's gradient reaches every rank's candidates; summed over ranks (as DDP does before averaging)
    # they equal the gradient of the summed per-rank losses.
    (per_rank[0] + per_rank[1]).backward()
    torch.testing.assert_close(torch.cat([r0["gq"], r1["gq"]]), q_all.grad)
    torch.testing.assert_close(torch.cat([r0["gc"], r1["gc"]]), c_all.grad)


def test_duplicate_positives_are_not_counted_as_negatives():
    from trainer.training.loss import same_candidate_mask

    torch.manual_seed(0)
    q = F.normalize(torch.randn(4, 8), dim=-1)
    c = F.normalize(torch.randn(4, 8), dim=-1)
    c[2] = c[0]  # rows 0 and 2 share one positive candidate
    mask = same_candidate_mask(["a", "b", "a", "d"])
    assert mask.tolist() == [[False, False, True, False], [False] * 4, [True, False, False, False], [False] * 4]
    masked, plain = info_nce(q, c, 0.05, mask), info_nce(q, c, 0.05)
    assert masked < plain
    torch.testing.assert_close(info_nce(q, c, 0.05, torch.zeros(4, 4, dtype=torch.bool)), plain)
