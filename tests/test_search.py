"""nearest_code must equal the direct fp32 brute force, exactly, whatever the chunking."""

import pytest
import torch

from revq.errors import ConfigError
from revq.search import _chunk_sizes, nearest_code, nearest_code_bruteforce


@pytest.mark.parametrize("G,B,N,d", [(3, 50, 200, 4), (1, 300, 1000, 2), (5, 17, 33, 8), (2, 1, 1, 3), (4, 9, 7, 1)])
def test_matches_bruteforce_all_chunkings(G, B, N, d):
    gen = torch.Generator().manual_seed(G * 1000 + N)
    x = torch.randn(G, B, d, generator=gen)
    c = torch.randn(G, N, d, generator=gen)
    ref = nearest_code_bruteforce(x, c)
    budgets = {
        2**30: "unchunked",
        4 * B * N * 2: "groups chunked",
        4 * B * max(1, N // 3): "codes chunked",
        4 * max(1, B // 2): "batch chunked (one code per block)",
        4: "one value per block",
    }
    for budget, what in budgets.items():
        if budget <= 4 * B and G * B * N > 5000:
            continue
        assert torch.equal(nearest_code(x, c, memory_budget_bytes=budget), ref), what


@pytest.mark.parametrize("budget", [8, 40, 364, 2**30])
def test_ties_go_to_lowest_index(budget):
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(2, 50, 4, generator=gen)
    c[:, 30] = c[:, 10]
    c[:, 40] = c[:, 10]
    x = c[:, [40, 30, 10, 5]].clone()
    out = nearest_code(x, c, memory_budget_bytes=budget)
    assert out.tolist() == [[10, 10, 10, 5]] * 2
    # exactly equidistant, distinct codes: 0 between -1 and +1 (listed high index first)
    c2 = torch.tensor([[[5.0], [1.0], [-1.0], [7.0]]])
    assert nearest_code(torch.zeros(1, 1, 1), c2, memory_budget_bytes=budget).item() == 1


def test_exact_where_the_expansion_is_not():
    """Large offsets make ||x||^2 - 2xc + ||c||^2 cancel badly; the certificate must repair it."""
    gen = torch.Generator().manual_seed(1)
    off = 3000.0
    c = off + 0.01 * torch.randn(8, 400, 4, generator=gen)
    x = off + 0.01 * torch.randn(8, 64, 4, generator=gen)
    ref = nearest_code_bruteforce(x, c)
    raw = nearest_code(x, c, exact=False)
    assert (raw != ref).any(), "test data no longer stresses the expansion"
    for budget in (1024, 2**30):
        assert torch.equal(nearest_code(x, c, memory_budget_bytes=budget), ref)


def test_near_ties_one_ulp_apart():
    c = torch.tensor([[[1.0, 0.0], [torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)).item(), 0.0], [-3.0, 0.0]]])
    x = torch.tensor([[[2.0, 0.0], [0.5, 0.0]]])
    assert torch.equal(nearest_code(x, c), nearest_code_bruteforce(x, c))


def test_fp32_under_autocast_and_half_inputs():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 64, 4, generator=gen)
    c = torch.randn(4, 300, 4, generator=gen)
    ref = nearest_code_bruteforce(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_code(x, c, memory_budget_bytes=4096), ref)
    xb, cb = x.bfloat16(), c.bfloat16()
    assert torch.equal(nearest_code(xb, cb), nearest_code_bruteforce(xb.float(), cb.float()))


def test_precomputed_norms_and_errors():
    x = torch.randn(2, 5, 3)
    c = torch.randn(2, 11, 3)
    assert torch.equal(nearest_code(x, c, codebook_sq_norms=c.pow(2).sum(-1)), nearest_code_bruteforce(x, c))
    with pytest.raises(ConfigError):
        nearest_code(x, torch.randn(3, 11, 3))
    with pytest.raises(ConfigError):
        nearest_code(x, torch.randn(2, 11, 4))


@pytest.mark.parametrize("G,B,N", [(256, 128, 262144), (512, 128, 16384), (1, 4096, 10**7), (3, 2, 5)])
def test_chunks_respect_the_budget(G, B, N):
    budget = 512 * 2**20
    for per_code in (0, 17):
        gs, bs, ns = _chunk_sizes(G, B, N, budget // 4, per_code=per_code)
        assert gs * ns * (bs + per_code) * 4 <= budget
        assert 1 <= gs <= G and 1 <= bs <= B and 1 <= ns <= N
    assert _chunk_sizes(256, 128, 262144, budget // 4, per_code=17) == (3, 128, 262144)
    assert _chunk_sizes(2, 128, 1000, 100 * 145, per_code=17) == (1, 128, 64)  # whole batch, split codes (whole runs)
    assert _chunk_sizes(2, 128, 1000, 50 * 145, per_code=17) == (1, 128, 50)  # fewer codes than a run fit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="peak memory is measured on CUDA")
def test_peak_memory_on_cuda_large_problem():
    dev = torch.device("cuda")
    x = torch.randn(256, 128, 8, device=dev)
    c = torch.randn(256, 262144, 8, device=dev)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = nearest_code(x, c, memory_budget_bytes=512 * 2**20)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= 512 * 2**20 * 1.05
    sample = torch.arange(0, 256, 37, device=dev)
    ref = torch.stack([nearest_code_bruteforce(x[g : g + 1, :16], c[g : g + 1])[0] for g in sample.tolist()])
    assert torch.equal(out[sample, :16], ref)


@pytest.mark.parametrize("budget", [2**12, 2**16, 2**30])
def test_duplicated_codes_from_coarse_data(budget):
    """Codes sampled with replacement from bf16-rounded data: many exact ties, all repaired."""
    gen = torch.Generator().manual_seed(3)
    pool = torch.randn(300, 4, generator=gen).bfloat16().float()
    c = pool[torch.randint(300, (4, 500), generator=gen)]
    x = torch.cat([pool[torch.randint(300, (4, 60), generator=gen)], torch.randn(4, 60, 4, generator=gen)], 1)
    ref = nearest_code_bruteforce(x, c)
    assert torch.equal(nearest_code(x, c, memory_budget_bytes=budget), ref)


@pytest.mark.parametrize("budget", [2**12, 4 * 40 * 128 + 4 * 17 * 128, 2**30])
def test_run_minima_path_ties_and_second_best(budget):
    """Blocks whose width is a multiple of the run length take the one-pass path (`_block_top2`):
    ties across runs and inside a run must still go to the lowest index, and near ties (which need
    a correct second best to be caught by the certificate) must still be repaired."""
    from revq.search import _RUN

    gen = torch.Generator().manual_seed(5)
    N = 10 * _RUN
    c = torch.randn(3, N, 4, generator=gen)
    c[:, 7 * _RUN + 3] = c[:, 2 * _RUN + 9]  # tie across runs: 2*RUN+9 must win
    c[:, 2 * _RUN + 11] = c[:, 2 * _RUN + 9]  # and inside the winning run
    c[:, 5 * _RUN + 1] = c[:, 4 * _RUN + 2] + 1e-7  # near tie across runs (second best in another run)
    c[:, 6 * _RUN + 5] = c[:, 6 * _RUN + 4] * (1 + 1e-7)  # near tie inside one run
    picks = [7 * _RUN + 3, 2 * _RUN + 9, 5 * _RUN + 1, 4 * _RUN + 2, 6 * _RUN + 5]
    x = torch.cat([c[:, picks], torch.randn(3, 40, 4, generator=gen)], 1)
    ref = nearest_code_bruteforce(x, c)
    assert ref[0, 0].item() == 2 * _RUN + 9
    assert torch.equal(nearest_code(x, c, memory_budget_bytes=budget), ref)
