#!/usr/bin/env python3
"""Derives the transform matrices of Winograd's F(m×m, r×r) as src/ops/winograd.rs writes them.

Usage: python3 tools/winograd_coefficients.py M R POINT... (finite points; ∞ is added), e.g.
    python3 tools/winograd_coefficients.py 6 3 0 1 -1 1/2 -1/2 2 -2   # F6
    python3 tools/winograd_coefficients.py 4 3 0 1 -1 2 -2            # F4 (prints BT6)

Aᵀ rows are each point's powers 0..m−1, G rows its powers 0..r−1 over Π(p − q) of the other
finite points (∞: the last power alone), and Bᵀ is solved for exactly so that
Aᵀ[(G g) ⊙ (Bᵀ d)] is the correlation of g with d. Needs sympy (pip install sympy).
"""
import sys
import sympy as sp


def scheme(m, r, points):
    alpha = m + r - 1
    if len(points) != alpha - 1:
        sys.exit(f"F({m}, {r}) needs {alpha - 1} finite points, got {len(points)}")

    def spread(p):
        out = sp.Integer(1)
        for q in points:
            if q != p:
                out *= p - q
        return out

    a = sp.Matrix([[p**i for i in range(m)] for p in points] + [[0] * (m - 1) + [1]])
    g = sp.Matrix([[p**k / spread(p) for k in range(r)] for p in points] + [[0] * (r - 1) + [1]])
    bt = sp.Matrix(alpha, alpha, lambda i, j: sp.Symbol(f"b{i}_{j}"))
    eqs = [
        sum(a[x, i] * g[x, k] * bt[x, l] for x in range(alpha)) - (1 if l == i + k else 0)
        for i in range(m)
        for k in range(r)
        for l in range(alpha)
    ]
    (solution,) = sp.solve(eqs, list(bt), dict=True)
    return a.T, g, bt.subs(solution)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    m, r = int(sys.argv[1]), int(sys.argv[2])
    at, g, bt = scheme(m, r, [sp.Rational(p) for p in sys.argv[3:]])
    for name, mat in (("BT", bt), ("G", g), ("AT", at)):
        print(name)
        for row in mat.tolist():
            print("  [" + ", ".join(str(v) for v in row) + "]")
