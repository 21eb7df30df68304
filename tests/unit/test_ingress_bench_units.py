"""The ingress bench's report (no stack): CPU per webhook at every rate, with its spread and the target."""

from __future__ import annotations

from bench.ingress_bench import Run, _report, parse_args


def run(label: str, rate: float | None, ok: int, elapsed_s: float, cpu_s: float) -> Run:
    r = Run(label, rate, [b""] * ok, latencies=[0.001] * ok, statuses={200: ok}, elapsed_s=elapsed_s)
    r.receiver_cpu_s = cpu_s
    return r


def test_the_report_gives_cpu_per_webhook_at_every_rate_and_the_ratio_to_max() -> None:
    """Medians over the rounds at each offered rate and at max; the target holds on the medians."""
    args = parse_args(["--rates", "500,2000", "--rate-rounds", "3", "--max-rounds", "3", "--no-cdc"])
    runs = []
    for n, us in zip((1, 2, 3), (100, 140, 110), strict=True):
        runs += [
            run(f"bare@500/s#{n}", 500, 5000, 10.0, 5000 * 80e-6),
            run(f"verified@500/s#{n}", 500, 5000, 10.0, 5000 * us * 1e-6),
            run(f"bare@2000/s#{n}", 2000, 20000, 10.0, 20000 * 50e-6),
            run(f"verified@2000/s#{n}", 2000, 20000, 10.0, 20000 * 90e-6),
            run(f"bare@max#{n}", None, 40000, 1.5, 40000 * 36e-6),
            run(f"verified@max#{n}", None, 40000, 2.5, 40000 * (55 + n) * 1e-6),
        ]

    report = _report(args, {}, runs, on_topic=0, cdc=None)

    cpu = report["cpu_per_webhook"]
    assert cpu["verified_us"]["500/s"] == {"median": 110.0, "min": 100.0, "max": 140.0}
    assert cpu["verified_us"]["max"]["median"] == 57.0
    assert cpu["bare_us"]["2000/s"]["median"] == 50.0
    assert cpu["verified_ratio_to_max"] == {"500/s": 1.93, "2000/s": 1.58}
    assert cpu["met"] is True
    assert cpu["verified_over_bare"] == {"500/s": 1.38, "2000/s": 1.8, "max": 1.58}
    assert report["at_offered_rates"]["500/s"]["verified"]["receiver_cpu_us_per_200"]["median"] == 110.0
    assert report["at_offered_rates"]["500/s"]["ratio_to_bare"] == 1.0
