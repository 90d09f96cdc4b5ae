"""Layout, nearest neighbour, counting, initialisation and the Eq. 3 non-activation reset."""

import os
import tempfile

import pytest
import torch

from revq.errors import ConfigError
from revq.quantizer import MultiGroupQuantizer
from revq.search import nearest_code_bruteforce

SHAPE = (32, 8, 8)


def coord_latent():
    """z[0, c, h, w] = 1000 c + 10 h + w: every value names its coordinate."""
    c, h, w = torch.meshgrid(torch.arange(32), torch.arange(8), torch.arange(8), indexing="ij")
    return (1000 * c + 10 * h + w).float()[None]


def decode(v):
    v = int(v)
    return v // 1000, (v % 1000) // 10, v % 10


def test_channel_layout_512_tokens_matches_the_issue():
    q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=512, codebook_size=4)
    tok = q.to_tokens(coord_latent())[0]  # (512, 4)
    assert tok.shape == (512, 4)
    for t in range(512):
        expected = [(t // 16, (t // 2) % 8, 4 * (t % 2) + k) for k in range(4)]
        assert [decode(v) for v in tok[t]] == expected, t


def test_channel_layout_256_tokens_is_one_row():
    q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=256, codebook_size=4)
    tok = q.to_tokens(coord_latent())[0]
    for t in (0, 7, 8, 255):
        assert [decode(v) for v in tok[t]] == [(t // 8, t % 8, w) for w in range(8)]


def test_spatial_layout_is_channel_vector_per_position():
    for split in ("spatial", "single"):
        q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=64, codebook_size=4, split=split)
        tok = q.to_tokens(coord_latent())[0]  # (64, 32)
        for t in (0, 9, 63):
            assert [decode(v) for v in tok[t]] == [(c, t // 8, t % 8) for c in range(32)]
        q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=128, codebook_size=4, split=split)
        tok = q.to_tokens(coord_latent())[0]  # half a channel vector per token
        assert [decode(v) for v in tok[3]] == [(16 + c, 0, 1) for c in range(16)]
    assert MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=64, codebook_size=4, split="single").codebooks.shape == (1, 4, 32)


@pytest.mark.parametrize("split", ["channel", "spatial", "single"])
@pytest.mark.parametrize("T", [1, 64, 512, 2048])
def test_layout_round_trip(split, T):
    q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=T, codebook_size=2, split=split)
    z = torch.randn(3, *SHAPE)
    assert torch.equal(q.from_tokens(q.to_tokens(z)), z)


def test_bad_token_count_lists_valid_counts():
    with pytest.raises(ConfigError, match="valid token counts.*512"):
        MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=500, codebook_size=4)
    with pytest.raises(ConfigError):
        MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=512, codebook_size=4, split="rows")


@pytest.mark.parametrize("split,T", [("channel", 512), ("channel", 256), ("spatial", 128), ("single", 256)])
def test_quantize_is_exact_nearest_and_lookup_consistent(split, T):
    torch.manual_seed(0)
    q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=T, codebook_size=37, split=split, memory_budget_bytes=4096)
    z = torch.randn(5, *SHAPE)
    z_q, idx = q.quantize(z)
    assert idx.shape == (5, T) and idx.dtype == torch.long
    tok = q.to_tokens(z)  # (B, T, d)
    if split == "single":
        ref = nearest_code_bruteforce(tok.reshape(1, -1, q.token_dim), q.codebooks).reshape(5, T)
    else:
        ref = nearest_code_bruteforce(tok.transpose(0, 1), q.codebooks).T
    assert torch.equal(idx, ref)
    assert torch.equal(z_q, q.lookup(idx))
    # z_q is made of code rows: gradients reach exactly the selected codes
    z_q.sum().backward()
    grad_rows = (q.codebooks.grad.abs().sum(-1) > 0).sum()
    if split == "single":
        assert grad_rows == idx.unique().numel()
    else:
        used = torch.zeros(T, 37, dtype=torch.bool)
        used[torch.arange(T)[None, :].expand_as(idx), idx] = True
        assert grad_rows == used.sum()


def test_counts_only_in_training_mode():
    q = MultiGroupQuantizer(latent_shape=SHAPE, num_tokens=512, codebook_size=8)
    z = torch.randn(6, *SHAPE)
    q.eval()
    q.quantize(z)
    assert q.counts.sum() == 0
    q.train()
    q.quantize(z, update_counts=False)
    assert q.counts.sum() == 0
    _, idx = q.quantize(z)
    assert torch.equal(q.counts.sum(1), torch.full((512,), 6))
    expected = torch.zeros(512, 8, dtype=torch.long)
    for b in range(6):
        expected[torch.arange(512), idx[b]] += 1
    assert torch.equal(q.counts, expected)


def test_usage_and_perplexity():
    q = MultiGroupQuantizer(latent_shape=(2, 1, 1), num_tokens=2, codebook_size=8)
    q.counts.copy_(torch.tensor([[3, 3, 3, 3, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]]))
    u = q.usage()
    assert u["usage"] == pytest.approx(5 / 16)
    assert u["usage_per_group"].tolist() == [0.5, 0.125]
    assert u["usage_min_group"] == 0.125
    assert u["perplexity"] == pytest.approx((4 + 1) / 2)


def test_init_from_data_random_and_kmeans():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 4, 2, 2, generator=gen)
    q = MultiGroupQuantizer(latent_shape=(4, 2, 2), num_tokens=8, codebook_size=20)
    q.counts.fill_(3)
    q.init_from_data(z, generator=gen)
    assert q.counts.sum() == 0
    tok = q.to_tokens(z)  # (S, T, d)
    for g in range(8):
        # every code is a training sub-vector of ITS group, drawn without replacement (S >= N)
        match = (q.codebooks[g][:, None, :] == tok[None, :, g, :]).all(-1)  # (N, S)
        assert match.any(1).all()
        assert match.float().argmax(1).unique().numel() == 20
    # fewer samples than codes: with replacement, still from the data
    q.init_from_data(z[:5], generator=gen)
    assert ((q.codebooks[0][:, None, :] == q.to_tokens(z[:5])[None, :, 0, :]).all(-1)).any(1).all()

    def err(model):
        with torch.no_grad():
            return ((model.quantize(z)[0] - z) ** 2).mean().item()

    q.init_from_data(z, generator=torch.Generator().manual_seed(1))
    e_random = err(q)
    q.init_from_data(z, method="kmeans", generator=torch.Generator().manual_seed(1))
    assert err(q) < e_random
    with pytest.raises(ConfigError):
        q.init_from_data(z, method="pca")


def make_reset_quantizer(counts):
    counts = torch.as_tensor(counts)
    G, N = counts.shape
    q = MultiGroupQuantizer(latent_shape=(G, 1, 2), num_tokens=G, codebook_size=N)
    with torch.no_grad():
        q.codebooks.copy_(torch.arange(G * N * 2, dtype=torch.float32).reshape(G, N, 2))
    q.counts.copy_(counts)
    return q


def test_reset_eq3_exact_rows():
    q = make_reset_quantizer([[5, 0, 3, 0, 9, 1], [1, 2, 3, 4, 5, 6]])
    old = q.codebooks.detach().clone()
    res = q.reset_dead_codes(noise=0.0)
    # group 0 ascending by count: i = (1, 3, 5, 2, 0, 4); r = 2: c_1 <- c_4, c_3 <- c_0
    expected = old.clone()
    expected[0, 1] = old[0, 4]
    expected[0, 3] = old[0, 0]
    assert torch.equal(q.codebooks.detach(), expected)
    assert res.num_reset.tolist() == [2, 0]
    assert res.reset_rows[0].tolist() == [1, 3] and res.reset_rows[1].numel() == 0
    assert res.source_rows[0].tolist() == [4, 0]
    assert q.counts.sum() == 0


def test_reset_cycles_when_fewer_used_than_unused():
    q = make_reset_quantizer([[0, 0, 0, 0, 2, 7]])
    old = q.codebooks.detach().clone()
    res = q.reset_dead_codes(noise=0.0)
    # used codes from most to least used: 5, 4, 5, 4
    assert res.reset_rows[0].tolist() == [0, 1, 2, 3]
    assert res.source_rows[0].tolist() == [5, 4, 5, 4]
    assert torch.equal(q.codebooks.detach()[0], old[0, [5, 4, 5, 4, 4, 5]])


def test_reset_nothing_moves_when_r_is_zero_or_no_code_used():
    q = make_reset_quantizer([[1, 2, 3, 4], [0, 0, 0, 0]])
    old = q.codebooks.detach().clone()
    res = q.reset_dead_codes(noise=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q.codebooks.detach(), old)
    assert res.num_reset.tolist() == [0, 0] and res.total == 0


def test_reset_cap_and_relative_noise():
    counts = torch.zeros(1, 10, dtype=torch.long)
    counts[0, 6:] = torch.tensor([1, 2, 3, 4])
    q = make_reset_quantizer(counts)
    res = q.reset_dead_codes(noise=0.0, max_fraction=0.2)
    assert res.reset_rows[0].tolist() == [0, 1]  # max(int(0.2 * 10), 1) = 2, lowest-index dead codes first
    assert res.source_rows[0].tolist() == [9, 8]

    q = MultiGroupQuantizer(latent_shape=(2, 1, 1), num_tokens=2, codebook_size=4000)
    with torch.no_grad():
        q.codebooks.mul_(100.0)
    q.counts[:, :2000] = 1
    old = q.codebooks.detach().clone()
    res = q.reset_dead_codes(noise=0.1, generator=torch.Generator().manual_seed(0))
    for g in range(2):
        delta = q.codebooks.detach()[g, res.reset_rows[g]] - old[g, res.source_rows[g]]
        assert delta.std().item() == pytest.approx(0.1 * old[g].std().item(), rel=0.1)


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(123)  # same codebooks on both ranks (as DDP guarantees)
    q = MultiGroupQuantizer(latent_shape=(2, 1, 1), num_tokens=2, codebook_size=6)
    # each rank saw different codes; code 5 of group 0 is used on rank 1 only, code 0 on neither
    counts = [[[0, 3, 0, 1, 2, 0], [1, 1, 1, 1, 1, 1]], [[0, 0, 4, 0, 0, 7], [0, 1, 1, 1, 1, 1]]][rank]
    q.counts.copy_(torch.tensor(counts))
    # different generator seeds per rank: the broadcast must still make the noise identical
    res = q.reset_dead_codes(noise=0.1, generator=torch.Generator().manual_seed(rank))
    torch.save({"cb": q.codebooks.detach(), "rows": [r.tolist() for r in res.reset_rows]}, f"{out_dir}/{rank}.pt")
    dist.destroy_process_group()


def test_distributed_reset_sums_counts_and_agrees():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        # fork: no re-import of torch in the children (spawn costs seconds on a busy CPU)
        mp.start_processes(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True, start_method="fork")
        r0, r1 = (torch.load(f"{tmp}/{r}.pt") for r in (0, 1))
    assert torch.equal(r0["cb"], r1["cb"])
    # summed counts: group 0 = [0, 3, 4, 1, 2, 7] -> only code 0 dead; group 1 all used
    assert r0["rows"] == r1["rows"] == [[0], []]


# ---------------------------------------------------------------- shared codebooks (tokens_per_codebook)
@pytest.mark.parametrize("split,T,k", [("channel", 512, 16), ("channel", 256, 8), ("spatial", 64, 4), ("channel", 32, 32)])
def test_shared_codebooks_equal_a_per_position_model_with_repeated_codebooks(split, T, k):
    """A codebook shared by k positions must act exactly like k identical per-position codebooks."""
    torch.manual_seed(0)
    shared = MultiGroupQuantizer(latent_shape=(32, 8, 8), num_tokens=T, codebook_size=37, split=split, tokens_per_codebook=k)
    assert shared.codebooks.shape == (T // k, 37, 32 * 64 // T)
    per_pos = MultiGroupQuantizer(latent_shape=(32, 8, 8), num_tokens=T, codebook_size=37, split=split)
    with torch.no_grad():
        per_pos.codebooks.copy_(shared.codebooks.repeat_interleave(k, dim=0))
    z = torch.randn(5, 32, 8, 8)
    zq_s, idx_s = shared.quantize(z)
    zq_p, idx_p = per_pos.quantize(z)
    assert torch.equal(idx_s, idx_p)
    assert torch.equal(zq_s, zq_p)
    # brute force per token against its own codebook
    tokens = shared.to_tokens(z)  # (B, T, d)
    ref = nearest_code_bruteforce(tokens.transpose(0, 1), shared.codebooks[shared.codebook_of_token()])  # (T, B)
    assert torch.equal(idx_s, ref.T)
    # counts of a shared codebook are the sum over the positions it serves
    assert torch.equal(shared.counts, per_pos.counts.view(T // k, k, 37).sum(1))


def test_shared_codebook_init_pools_all_its_positions():
    torch.manual_seed(0)
    q = MultiGroupQuantizer(latent_shape=(4, 2, 2), num_tokens=8, codebook_size=6, split="channel", tokens_per_codebook=2)
    z = torch.randn(3, 4, 2, 2)
    q.init_from_data(z, generator=torch.Generator().manual_seed(0))
    tokens = q.to_tokens(z)  # (3, 8, 2)
    for g in range(q.num_groups):
        pool = tokens[:, 2 * g : 2 * g + 2].reshape(-1, 2)  # the 6 sub-vectors codebook g serves
        for code in q.codebooks[g]:
            assert (pool == code).all(-1).any(), "an initial code is not one of its own positions' sub-vectors"
        # 6 samples without replacement: every pooled sub-vector is used once
        assert torch.equal(torch.sort(q.codebooks[g].sum(-1)).values, torch.sort(pool.sum(-1)).values)


def test_tokens_per_codebook_must_divide():
    with pytest.raises(ConfigError, match="tokens_per_codebook"):
        MultiGroupQuantizer(latent_shape=(32, 8, 8), num_tokens=512, codebook_size=8, tokens_per_codebook=3)
