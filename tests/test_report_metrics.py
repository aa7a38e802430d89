"""Hand-checked examples for every report metric, Shapley/interaction/Banzhaf against shapiq's
exact computer (an independent implementation), and the paired bootstrap's properties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vlmeval_encred.report import metrics as M
from vlmeval_encred.report.bootstrap import BootInput, paired_bootstrap, resample_counts
from vlmeval_encred.report.scores import Units

ENC = ("a", "b", "c")
# kept set -> score; v(all) = 50, no vision = 10
V3 = {(): 10.0, ("a",): 20.0, ("b",): 25.0, ("c",): 12.0, ("a", "b"): 40.0, ("a", "c"): 30.0,
      ("b", "c"): 28.0, ("a", "b", "c"): 50.0}
G3 = {frozenset(k): v for k, v in V3.items()}


def test_cur_and_ig_by_hand():
    # CUR(a) = (50 - v(b,c)) / 50 = (50 - 28) / 50 = 44 %; b: (50-30)/50 = 40 %; c: (50-40)/50 = 20 %
    assert M.cur(G3, ENC, "a") == pytest.approx(44.0)
    assert M.cur(G3, ENC, "b") == pytest.approx(40.0)
    assert M.cur(G3, ENC, "c") == pytest.approx(20.0)
    assert M.ig({e: M.cur(G3, ENC, e) for e in ENC}) == pytest.approx(24.0)
    # harmful encoder: removing it helps -> negative CUR
    g = dict(G3)
    g[frozenset({"a", "b"})] = 55.0
    assert M.cur(g, ENC, "c") == pytest.approx(-10.0)


def test_cur_missing_inputs_are_none():
    g = {k: v for k, v in G3.items() if k != frozenset({"b", "c"})}
    assert M.cur(g, ENC, "a") is None
    assert M.ig({"a": None, "b": 3.0}) is None
    assert M.cur({frozenset(ENC): 0.0, frozenset({"b", "c"}): 0.0}, ENC, "a") is None  # v(all) = 0


def test_k_curve_by_hand():
    rows = M.k_curve(G3, ENC)
    assert [r["k"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["max"] == rows[0]["min"] == 50.0
    k1 = rows[1]  # masked one: v(bc)=28, v(ac)=30, v(ab)=40
    assert (k1["max"], k1["min"], k1["mean"]) == (40.0, 28.0, pytest.approx(98 / 3))
    assert k1["argmax"] == "-c" and k1["argmin"] == "-a"
    k2 = rows[2]  # alone: 20, 25, 12
    assert (k2["max"], k2["min"], k2["mean"]) == (25.0, 12.0, pytest.approx(19.0))
    assert rows[3]["mean"] == 10.0 and rows[3]["argmax"] == "-a,-b,-c"
    # partial lattice: counted, not guessed
    g = {k: v for k, v in G3.items() if k != frozenset({"a", "b"})}
    r1 = M.k_curve(g, ENC)[1]
    assert (r1["n_present"], r1["n_subsets"], r1["max"]) == (2, 3, 30.0)


def test_capacity_necessity_and_pairing_by_hand():
    rows = {r["encoder"]: r for r in M.capacity_necessity(G3, ENC)}
    assert rows["b"]["capacity"] == 25.0 and rows["b"]["necessity"] == 20.0
    assert rows["a"]["capacity"] == 20.0 and rows["a"]["necessity"] == 22.0
    p = M.pairing(G3, ENC)
    # anchor = b (capacity 25); partners: (a,b)=40, (b,c)=28 -> complement a; top-2 capacity = b, a
    assert p["anchor"] == "b" and p["complement"] == "a" and p["anchor_pair_score"] == 40.0
    assert p["top2_capacity_pair"] == ["b", "a"]
    # a case where the two strongest alone are not the best pair
    g = dict(G3)
    g[frozenset({"b", "c"})] = 45.0
    p = M.pairing(g, ENC)
    assert p["complement"] == "c" and p["anchor_pair_score"] == 45.0 and p["top2_capacity_pair_score"] == 40.0
    missing = M.pairing({frozenset(ENC): 50.0}, ENC)
    assert not missing["available"] and "single-encoder" in missing["needs"]


def test_shapley_by_hand_two_players():
    g = {frozenset(): 10.0, frozenset({"a"}): 30.0, frozenset({"b"}): 20.0, frozenset({"a", "b"}): 50.0}
    s = M.shapley(g, ("a", "b"))
    # phi_a = 1/2 (30-10) + 1/2 (50-20) = 25; phi_b = 1/2 (20-10) + 1/2 (50-30) = 15
    assert s["values"] == {"a": pytest.approx(25.0), "b": pytest.approx(15.0)}
    assert s["interaction"]["a|b"] == pytest.approx(50 - 30 - 20 + 10)
    assert s["efficiency_ok"] and s["sum"] == pytest.approx(40.0)


def _shapiq_game(v: dict, enc: tuple[str, ...]):
    def game(coalitions: np.ndarray) -> np.ndarray:
        return np.array([v[frozenset(e for e, on in zip(enc, row) if on)] for row in coalitions], dtype=float)
    return game


@pytest.mark.parametrize("n,seed", [(3, 0), (4, 1), (5, 2)])
def test_shapley_interaction_banzhaf_match_shapiq(n, seed):
    shapiq = pytest.importorskip("shapiq")
    enc = tuple("abcde"[:n])
    rng = np.random.default_rng(seed)
    v = {frozenset(s): float(rng.uniform(0, 100)) for k in range(n + 1) for s in itertools.combinations(enc, k)}
    ours = M.shapley(v, enc)
    ec = shapiq.ExactComputer(_shapiq_game(v, enc), n_players=n)
    sv = ec("SV", order=1).dict_values
    sii = ec("SII", order=2).dict_values
    bv = ec("BV", order=1).dict_values
    for i, e in enumerate(enc):
        assert ours["values"][e] == pytest.approx(sv[(i,)], abs=1e-9)
        assert ours["banzhaf"][e] == pytest.approx(bv[(i,)], abs=1e-9)
    for (i, a), (j, b) in itertools.combinations(list(enumerate(enc)), 2):
        assert ours["interaction"][f"{a}|{b}"] == pytest.approx(sii[(i, j)], abs=1e-9)
    assert ours["efficiency_ok"]
    assert ours["sum"] == pytest.approx(v[frozenset(enc)] - v[frozenset()])


def test_lattice_missing_lists_masks():
    g = {k: v for k, v in G3.items() if k != frozenset({"c"})}
    assert M.lattice_missing(g, ENC) == ["-a,-b"]


def test_resample_counts_rows_sum_to_n():
    c = resample_counts(np.random.default_rng(0), 50, 7, 0, 50)
    assert c.shape == (50, 7) and (c.sum(1) == 7).all()


def _units(x, ids=None, w=None, norm=100.0):
    x = np.asarray(x, float)
    ids = np.array([str(i) for i in (ids if ids is not None else range(len(x)))], dtype=object)
    return Units(ids, x, np.ones(len(x)) if w is None else np.asarray(w, float), norm)


def test_bootstrap_is_paired():
    """Identical outcomes on identical samples: every resampled difference is exactly 0 (a
    non-paired bootstrap would give a wide interval); a variant that is right on a strict
    superset of samples has a difference > 0 in every resample that contains them."""
    rng = np.random.default_rng(3)
    x_full = (rng.random(400) < 0.7).astype(float)
    x_same = x_full.copy()
    x_worse = x_full.copy()
    x_worse[np.flatnonzero(x_full)[:60]] = 0.0  # loses 60 of the full model's hits
    full, a_m, b_m = frozenset("ab"), frozenset("b"), frozenset("a")
    units = {full: _units(x_full), a_m: _units(x_same), b_m: _units(x_worse)}
    point = {k: {"T": u.score(), "C": u.score(), "Overall": u.score()} for k, u in units.items()}
    out = paired_bootstrap([BootInput("T", "T_D", units)], {"T": 1}, {"C": ["T"]}, ("a", "b"), point,
                           n_boot=500, seed=0)
    rows = {(r["quantity"], r["subject"], r["level"]): r for r in out.rows}
    same = rows[("variant - full", "-a", "T")]
    assert same["lo"] == same["hi"] == 0.0 and same["distinguishable"] is False
    worse = rows[("variant - full", "-b", "Overall")]
    assert worse["hi"] < 0 and worse["distinguishable"]
    assert worse["estimate"] == pytest.approx(-15.0)
    cur_b = rows[("CUR", "b", "Overall")]
    assert cur_b["lo"] > 0 and cur_b["estimate"] == pytest.approx(60 / x_full.sum() * 100)


def test_bootstrap_interval_width_matches_binomial():
    """A 0/1 outcome with p = 0.5 over n = 2000: the 95 % interval of the score is about
    +-1.96 * sqrt(p(1-p)/n) * 100 = +-2.19 points (difference vs an all-zero variant)."""
    x = np.zeros(2000)
    x[::2] = 1
    full, none = frozenset("a"), frozenset()
    units = {full: _units(x), none: _units(np.zeros(2000))}
    point = {k: {"T": u.score(), "C": u.score(), "Overall": u.score()} for k, u in units.items()}
    out = paired_bootstrap([BootInput("T", "D", units)], {"T": 1}, {"C": ["T"]}, ("a",), point, n_boot=2000)
    r = next(r for r in out.rows if r["quantity"] == "variant - full" and r["level"] == "T")
    assert (r["hi"] - r["lo"]) / 2 == pytest.approx(2.19, rel=0.12)


def test_bootstrap_weighted_units_and_missing_levels():
    # group-mean weights: two groups of sizes 1 and 3
    u = _units([1, 0, 0, 0], w=[1, 1 / 3, 1 / 3, 1 / 3])
    assert u.score() == pytest.approx(50.0)
    full, none = frozenset("a"), frozenset()
    units = {full: u, none: _units([0, 0, 0, 0], w=[1, 1 / 3, 1 / 3, 1 / 3])}
    point = {k: {"T": 1.0, "U": 1.0, "C": 1.0, "Overall": 1.0} for k in units}
    out = paired_bootstrap([BootInput("T", "D", units)], {"T": 1, "U": 1}, {"C": ["T", "U"]}, ("a",), point,
                           n_boot=100)
    levels = {m["level"] for m in out.missing}
    assert {"U", "C", "Overall"} <= levels
    assert any("per-sample" in m["needs"] for m in out.missing if m["level"] == "U")


def test_bootstrap_uses_shared_samples_and_says_so():
    full, none = frozenset("a"), frozenset()
    units = {full: _units([1, 1, 0], ids=[1, 2, 3]), none: _units([0, 1], ids=[2, 3])}
    point = {k: {"T": 1.0, "C": 1.0, "Overall": 1.0} for k in units}
    out = paired_bootstrap([BootInput("T", "D", units)], {"T": 1}, {"C": ["T"]}, ("a",), point, n_boot=50)
    assert any("2 samples all of them share" in n for n in out.notes)


def test_too_few_resamples_give_no_interval_instead_of_a_point():
    """One resample would give [x, x], an 'interval' excluding 0: below MIN_RESAMPLES no interval
    is given and 'Not computed' says why."""
    from vlmeval_encred.report.bootstrap import MIN_RESAMPLES

    x = np.zeros(200)
    x[::2] = 1
    full, none = frozenset("a"), frozenset()
    units = {full: _units(x), none: _units(np.zeros(200))}
    point = {k: {"T": u.score(), "C": u.score(), "Overall": u.score()} for k, u in units.items()}
    for n_boot in (1, MIN_RESAMPLES - 1):
        out = paired_bootstrap([BootInput("T", "D", units)], {"T": 1}, {"C": ["T"]}, ("a",), point, n_boot=n_boot)
        assert out.rows and all(r["lo"] is None and r["distinguishable"] is None for r in out.rows)
        assert any(f"at least {MIN_RESAMPLES} resamples" in m["needs"] for m in out.missing)
    out = paired_bootstrap([BootInput("T", "D", units)], {"T": 1}, {"C": ["T"]}, ("a",), point,
                           n_boot=MIN_RESAMPLES)
    assert all(r["lo"] is not None for r in out.rows) and not out.missing
