# session 13: is the pruned topb tree kernel (branch tree-prune) a hang or a slow compile? same tree? time?
import time, torch
from jetspec_core.kernels import tree_build as tb
from jetspec_core.engine.gpu_tree import build_from_topk, StaticTree
from jetspec_core.engine import bucket_for
root = torch.tensor(11, device="cuda")
for spread in (3.0, 8.0):
    gen = torch.Generator().manual_seed(3)
    dl = torch.log_softmax(torch.randn(15, 32000, generator=gen) * spread, -1).cuda()
    for budget in (256, 64):
        lp, tok = torch.topk(dl, 16, -1)
        n = bucket_for(budget)
        t0 = time.time()
        got = tb.build_tree_triton("topb", lp, tok, root, budget, n)
        torch.cuda.synchronize()
        print(f"spread {spread} budget {budget}: first call {time.time() - t0:.1f} s, plan", {k: v for k, v in tb._plan("topb", 15, 16, budget, n, tb.PRUNE_FROM).items() if k in ("CB", "GB", "PRUNE")}, flush=True)
        ref = build_from_topk("topb", lp, tok, root, budget, n)
        print("  same tree", all(torch.equal(getattr(got, f), getattr(ref, f)) for f in StaticTree.FIELDS), flush=True)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(3):
            tb.build_tree_triton("topb", lp, tok, root, budget, n)
        a.record()
        for _ in range(50):
            tb.build_tree_triton("topb", lp, tok, root, budget, n)
        b.record(); torch.cuda.synchronize()
        print(f"  {a.elapsed_time(b) / 50 * 1000:.1f} us/call (eager)", flush=True)
