import torch, math
got = torch.load("/tmp/dlogp.pt")
FLOOR=-1e4
def emulate(lp, K, B, prune):
    d = lp.shape[0]; KEEP = B - 1; TAKE = KEEP
    prev_vals = [0.0]; allv = []; thr = -math.inf; R = []
    widths = []
    for t in range(d):
        size = min(len(prev_vals) * K, KEEP)
        cands = []
        for s, pv in enumerate(prev_vals):
            n = min(size // (s + 1), K)
            for j in range(n):
                v = pv + lp[t, j]
                if prune and v < thr: break
                cands.append(v)
        total = len(cands)
        widths.append(total)
        cands.sort(reverse=True)
        kept = [v for v in cands[:size] if (not prune or v >= thr)]
        allv += kept
        if prune:
            R = sorted(R + kept[:256], reverse=True)[:256]
            thr = R[TAKE - 1] if len(R) >= TAKE else -math.inf
        prev_vals = kept
    inn = [v for v in allv if v >= thr] if prune else allv
    return widths, len(allv), len(inn)
for i, g in enumerate(got[:4]):
    for K, B in ((16, 256), (16, 128)):
        lp = torch.topk(g, K, dim=-1).values.clamp(min=FLOOR)
        w0, e0, _ = emulate(lp, K, B, False)
        w1, e1, c1 = emulate(lp, K, B, True)
        print(i, K, B, "no-prune widths", w0, "entries", e0)
        print("       prune widths", w1, "entries", e1, "global", c1)
