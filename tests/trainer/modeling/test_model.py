import pytest
import torch
from PIL import Image

from trainer.inference.api import TraceEmbedder
from trainer.modeling.interface import CandidateInput, QueryInput


@pytest.fixture(scope="module")
def embedder(tiny_base):
    torch.manual_seed(0)
    return TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=8, lora_alpha=16).eval()


def _queries():
    img = Image.new("RGB", (80, 60), (200, 30, 30))
    return [QueryInput("Find a picture of a red circle.", None, "mscoco", 0),
            QueryInput("Make the square blue instead.", img, "cirr", 7),
            QueryInput("Which city is this building in?", img.rotate(90), "infoseek", 6)]


def _manual_greedy(emb: TraceEmbedder, q: QueryInput, mode: str, max_new: int) -> tuple[list[int], torch.Tensor]:
    """Greedy decoding by full forwards (no cache) of the plain HF model: (generated ids, pre-token state)."""
    batch = emb.processor(emb.query_items([q]))
    generated: list[int] = []
    while True:
        ids = torch.cat([batch["input_ids"], torch.tensor([generated], dtype=torch.long)], dim=1)
        extra = torch.zeros(1, len(generated), dtype=torch.long)
        step = {**batch, "input_ids": ids, "attention_mask": torch.cat([batch["attention_mask"], extra + 1], 1),
                "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], extra], 1)}
        h = emb.base(**step, output_hidden_states=True).hidden_states[-1][0, -1]
        logits = emb.lm_head(h)
        if not generated and mode != "adaptive":
            logits[emb.emb_id] = float("inf") if mode == "direct" else float("-inf")
        nxt = int(logits.argmax())
        if nxt == emb.emb_id or len(generated) == max_new:
            return generated, torch.nn.functional.normalize(h, dim=-1)
        generated.append(nxt)


@pytest.mark.parametrize("mode", ["adaptive", "direct", "always"])
def test_query_embedding_is_the_pre_token_hidden_state(embedder, mode):
    qs = _queries()
    res = embedder.encode_queries(qs, mode=mode, max_new_tokens=4, batch_size=2)
    assert res.embeddings.shape == (3, embedder.base.config.text_config.hidden_size)
    for i, q in enumerate(qs):
        ids, manual = _manual_greedy(embedder, q, mode, 4)
        assert res.generated_tokens[i] == len(ids) and res.texts[i] == embedder.processor.tokenizer.decode(ids)
        torch.testing.assert_close(res.embeddings[i], manual, atol=1e-4, rtol=1e-4)
    if mode == "direct":
        assert res.reasoned == [False] * 3 and res.generated_tokens == [0] * 3
    if mode == "always":
        assert all(res.reasoned) and all(n >= 1 for n in res.generated_tokens)


def test_batched_and_single_encoding_agree(embedder):
    qs = _queries()
    together = embedder.encode_queries(qs, mode="direct", batch_size=3).embeddings
    alone = torch.cat([embedder.encode_queries([q], mode="direct").embeddings for q in qs])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)
    cands = [CandidateInput("a red circle", None, "text"), CandidateInput(None, Image.new("RGB", (64, 64)), "image"),
             CandidateInput("a blue square", Image.new("RGB", (70, 50), (0, 0, 255)), "image,text")]
    c = embedder.encode_candidates(cands, batch_size=3)
    torch.testing.assert_close(c, embedder.encode_candidates(cands, batch_size=1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(3))


def test_unknown_mode_is_rejected(embedder):
    with pytest.raises(ValueError, match="mode"):
        embedder.encode_queries(_queries(), mode="sometimes")


def test_save_then_load_reproduces_embeddings(embedder, tiny_base, tmp_path):
    with torch.no_grad():  # make the adapter non-trivial so a lost adapter would show
        for name, p in embedder.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    embedder.save(tmp_path / "ckpt", base_model=str(tiny_base))
    loaded = TraceEmbedder.load(tmp_path / "ckpt", device="cpu")
    qs = _queries()
    torch.testing.assert_close(loaded.encode_queries(qs, mode="direct").embeddings,
                               embedder.encode_queries(qs, mode="direct").embeddings, atol=1e-5, rtol=1e-5)
    cands = [CandidateInput("a red circle", None, "text")]
    torch.testing.assert_close(loaded.encode_candidates(cands), embedder.encode_candidates(cands))


def test_full_fine_tuning_trains_the_language_model_and_saves_a_whole_checkpoint(tiny_base, tmp_path):
    torch.manual_seed(0)
    emb = TraceEmbedder.from_base(str(tiny_base), device="cpu", lora_r=0)
    trainable = {n for n, p in emb.model.named_parameters() if p.requires_grad}
    assert any(".language_model." in n for n in trainable) and any("visual.merger." in n for n in trainable)
    assert not any(n.startswith("model.visual.blocks.") for n in trainable)  # vision encoder frozen (PAPER §3)
    with torch.no_grad():
        emb.model.get_input_embeddings().weight[emb.emb_id].mul_(3.0)  # trained weights must survive the round trip
    emb.save(tmp_path / "ckpt", base_model=str(tiny_base))
    assert not (tmp_path / "ckpt" / "adapter").exists()
    loaded = TraceEmbedder.load(tmp_path / "ckpt", device="cpu")
    qs = _queries()
    torch.testing.assert_close(loaded.encode_queries(qs, mode="adaptive", max_new_tokens=3).embeddings,
                               emb.eval().encode_queries(qs, mode="adaptive", max_new_tokens=3).embeddings)
