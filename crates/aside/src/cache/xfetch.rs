//! Probabilistic early expiration ("XFetch").
//!
//! When a hot entry expires, every read in the time its value takes to
//! recompute misses. Single-flight coalesces those misses within one process,
//! but each process still recomputes, and every caller waits for it. XFetch
//! (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache Stampede
//! Prevention", VLDB 2015) has a read *before* expiry volunteer to recompute,
//! with a probability that rises sharply as expiry nears:
//!
//! ```text
//! refresh early  <=>  now - delta * beta * ln(r) >= expiry,   r uniform in (0, 1]
//! ```
//!
//! - `-ln(r)` is exponentially distributed with mean 1, so a read `t` before
//!   expiry refreshes with probability `exp(-t / (delta * beta))`: negligible
//!   far from expiry, certain at it. No coordination between readers or
//!   processes is needed, only the entry's expiry and `delta`.
//! - `delta` is how long the value took to recompute. The early refresh must
//!   finish before expiry to spare the readers a miss, so an entry that is
//!   expensive to recompute starts refreshing proportionally earlier, and a
//!   cheap one is refreshed only at the last moment (few wasted recomputes).
//! - `beta` scales `delta`: 1 is the paper's choice; above 1 refreshes earlier
//!   (fewer misses, more recomputes), below 1 later.
//!
//! With one read every `s`, the first early refresh comes a lead of
//! `delta * beta * (ln(delta * beta / s) - ln(E))` before expiry, `E`
//! exponential with mean 1 (a Gumbel law): on average
//! `delta * beta * (ln(delta * beta / s) + 0.577)`. A busier key starts
//! earlier, only logarithmically so, and the trigger is one read, not a burst:
//! when the first read volunteers, the probability per read is still tiny.

use std::time::Duration;

/// Whether a read at `now_ms` of an entry expiring at `expiry_ms` should
/// recompute it now: `now - delta * beta * ln(random) >= expiry` (see the
/// module documentation), with `random` drawn uniformly in `(0, 1]`.
///
/// At or past expiry the answer is always yes. `beta <= 0` (or NaN) or a zero
/// `delta` turns early refresh off: yes only at expiry. A `random` of `0` or
/// less counts as the smallest positive `f64` (the most eager draw, about
/// `708 * delta * beta` early) rather than `ln(0) = -inf`; above `1` counts as
/// `1`, and NaN as `1` (no early refresh).
pub(crate) fn should_refresh_early(
    now_ms: u64,
    expiry_ms: u64,
    delta: Duration,
    beta: f64,
    random: f64,
) -> bool {
    if now_ms >= expiry_ms {
        return true;
    }
    if beta.is_nan() || beta <= 0.0 || delta.is_zero() {
        return false;
    }
    let random = if random.is_nan() {
        1.0
    } else if random > 0.0 {
        random.min(1.0)
    } else {
        f64::MIN_POSITIVE
    };
    // How far before expiry this draw volunteers; >= 0 since ln(random) <= 0.
    let lead_ms = delta.as_secs_f64() * 1000.0 * beta * -random.ln();
    // Exact for any remaining time below 2^53 ms (285,000 years).
    let remaining_ms = (expiry_ms - now_ms) as f64;
    lead_ms >= remaining_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    const DELTA: Duration = Duration::from_millis(200);
    const EXPIRY_MS: u64 = 60_000;

    // The simulations make millions of draws: `SmallRng` is seedable like
    // `StdRng` but about ten times faster in an unoptimised test build, which
    // keeps these tests well under a second. Its stream may differ between
    // platforms or rand versions; the assertions are statistical, with wide
    // margins, so they do not depend on one stream.

    /// Uniform in `(0, 1]`, as the formula wants.
    fn uniform(rng: &mut SmallRng) -> f64 {
        1.0 - rng.random::<f64>()
    }

    #[test]
    fn at_or_past_expiry_always_refreshes() {
        for random in [1.0, 0.5, 0.0] {
            for beta in [1.0, 0.0, -1.0, f64::NAN] {
                assert!(should_refresh_early(100, 100, DELTA, beta, random));
                assert!(should_refresh_early(101, 100, Duration::ZERO, beta, random));
            }
        }
    }

    #[test]
    fn no_early_refresh_without_beta_or_delta() {
        for beta in [0.0, -1.0, f64::NAN] {
            assert!(!should_refresh_early(99, 100, DELTA, beta, 1e-300));
        }
        assert!(!should_refresh_early(99, 100, Duration::ZERO, 1.0, 1e-300));
    }

    #[test]
    fn formula_edges() {
        // r = 1: ln(1) = 0, never early.
        assert!(!should_refresh_early(99_999, 100_000, DELTA, 1.0, 1.0));
        assert!(!should_refresh_early(99_999, 100_000, DELTA, 1.0, 5.0));
        assert!(!should_refresh_early(99_999, 100_000, DELTA, 1.0, f64::NAN));
        // r = 1/e: exactly delta * beta early.
        let r = (-1.0_f64).exp();
        assert!(should_refresh_early(100_000 - 199, 100_000, DELTA, 1.0, r));
        assert!(!should_refresh_early(100_000 - 201, 100_000, DELTA, 1.0, r));
        assert!(should_refresh_early(100_000 - 399, 100_000, DELTA, 2.0, r));
        assert!(!should_refresh_early(100_000 - 401, 100_000, DELTA, 2.0, r));
        // r = 0 is the most eager draw (~708 deltas), not infinitely early.
        assert!(should_refresh_early(0, 140_000, DELTA, 1.0, 0.0));
        assert!(!should_refresh_early(0, 142_000, DELTA, 1.0, 0.0));
        assert!(should_refresh_early(0, 140_000, DELTA, 1.0, -0.5));
    }

    #[test]
    fn probability_is_exp_of_minus_remaining_over_delta_beta() {
        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 100_000;
        for (remaining_ms, beta, expected) in [
            (200, 1.0, (-1.0_f64).exp()),
            (400, 2.0, (-1.0_f64).exp()),
            (200, 2.0, (-0.5_f64).exp()),
            (600, 1.0, (-3.0_f64).exp()),
        ] {
            let hits = (0..draws)
                .filter(|_| {
                    should_refresh_early(
                        EXPIRY_MS - remaining_ms,
                        EXPIRY_MS,
                        DELTA,
                        beta,
                        uniform(&mut rng),
                    )
                })
                .count();
            let p = hits as f64 / f64::from(draws);
            // The standard error is below 0.0016.
            assert!(
                (p - expected).abs() < 0.01,
                "remaining {remaining_ms} ms, beta {beta}: {p} vs {expected}"
            );
        }
    }

    /// One hot key expiring at 60 s, delta 200 ms, beta 1, one read per ms
    /// from 10 s before expiry. The first early refresh's lead follows
    /// `P(lead <= x) = exp(-(delta / 1 ms) * exp(-x / delta))`: median
    /// `200 * (ln 200 - ln ln 2)` = 1133 ms, mean `200 * (ln 200 + 0.577)` =
    /// 1175 ms, 99.99 % between 500 ms (P below: 8e-8) and 3 s (P above:
    /// 6e-5). Refreshing at expiry itself would need all of the 10,000 reads
    /// before it to decline: probability about `exp(-199)`.
    #[test]
    fn one_hot_key_refreshes_once_about_delta_ln_rate_before_expiry() {
        let mut rng = SmallRng::seed_from_u64(0x0a51de);
        let trials = 1000;
        let mut leads: Vec<u64> = (0..trials)
            .map(|_| {
                let first = (EXPIRY_MS - 10_000..=EXPIRY_MS)
                    .find(|&now| {
                        should_refresh_early(now, EXPIRY_MS, DELTA, 1.0, uniform(&mut rng))
                    })
                    .unwrap_or(EXPIRY_MS);
                EXPIRY_MS - first
            })
            .collect();
        leads.sort_unstable();

        assert!(leads[0] >= 1, "a trial refreshed only at expiry: {leads:?}");
        let within = leads.iter().filter(|&&l| (500..=3000).contains(&l)).count();
        assert!(within >= 990, "{within} of {trials} between 0.5 s and 3 s");
        let median = leads[trials / 2];
        // Theory 1133 ms; the sample median's standard error is about 9 ms.
        assert!((1060..=1210).contains(&median), "median lead {median} ms");
        let mean = leads.iter().sum::<u64>() as f64 / trials as f64;
        // Theory 1175 ms; standard error about 8 ms.
        assert!((1110.0..=1240.0).contains(&mean), "mean lead {mean} ms");
    }

    /// What one simulated trial of many clients saw.
    #[derive(Debug)]
    struct Stampede {
        /// When the first refresh was triggered.
        first_ms: u64,
        /// Triggers in that same millisecond, the first included: the
        /// recomputes that would start together without coalescing.
        in_first_ms: u32,
        /// Triggers while that refresh runs (it takes `DELTA`), the first
        /// included; aside coalesces these, but each is a caller that would
        /// otherwise recompute or wait.
        while_refreshing: u32,
    }

    const CLIENTS: u32 = 1000;
    const PERIOD_MS: u64 = 10;

    /// `CLIENTS` clients, each reading every `PERIOD_MS` from 5 s before
    /// expiry at a random phase, until the first refresh completes.
    fn stampede(rng: &mut SmallRng, beta: f64) -> Stampede {
        let mut per_phase = [0_u32; PERIOD_MS as usize];
        for _ in 0..CLIENTS {
            per_phase[rng.random_range(0..PERIOD_MS as usize)] += 1;
        }
        let delta_ms = u64::try_from(DELTA.as_millis()).unwrap_or(u64::MAX);
        let mut seen: Option<Stampede> = None;
        for now in EXPIRY_MS - 5_000.. {
            if seen.as_ref().is_some_and(|s| now >= s.first_ms + delta_ms) {
                break;
            }
            let readers = per_phase[usize::try_from(now % PERIOD_MS).unwrap_or(0)];
            for _ in 0..readers {
                if !should_refresh_early(now, EXPIRY_MS, DELTA, beta, uniform(rng)) {
                    continue;
                }
                match &mut seen {
                    None => {
                        seen = Some(Stampede {
                            first_ms: now,
                            in_first_ms: 1,
                            while_refreshing: 1,
                        });
                    }
                    Some(s) => {
                        s.while_refreshing += 1;
                        if now == s.first_ms {
                            s.in_first_ms += 1;
                        }
                    }
                }
            }
        }
        // Every read at or past expiry triggers, so the loop always ends with
        // `seen` set; this default is never used.
        seen.unwrap_or(Stampede {
            first_ms: u64::MAX,
            in_first_ms: 0,
            while_refreshing: 0,
        })
    }

    /// 1000 clients reading every 10 ms is 100 reads per ms. Plain expiry: the
    /// ~100 clients reading in the first ms after expiry all miss together,
    /// and all 1000 miss (20,000 reads) during the 200 ms recompute. XFetch:
    /// the first trigger comes about `200 * (ln(200 * 100) + 0.577)` = 2.1 s
    /// early (below 200 ms with probability `exp(-20000 / e)`), so the refresh
    /// ends before expiry and nobody misses; triggers in that millisecond are
    /// 1 plus a Poisson count with mean below 0.01, and those during the
    /// refresh 1 plus about `(e - 1) * E`, `E` exponential with mean 1.
    #[test]
    fn many_clients_trigger_one_refresh_not_a_burst() {
        let mut rng = SmallRng::seed_from_u64(0xb0057);

        let plain = stampede(&mut rng, 0.0);
        assert_eq!(plain.first_ms, EXPIRY_MS);
        assert!(plain.in_first_ms >= 50, "{plain:?}");
        assert_eq!(
            plain.while_refreshing,
            CLIENTS * 200 / 10,
            "every read during the recompute misses"
        );

        for _ in 0..10 {
            let early = stampede(&mut rng, 1.0);
            assert!(
                early.first_ms + 200 <= EXPIRY_MS,
                "the refresh ends before expiry: {early:?}"
            );
            assert!(early.in_first_ms <= 2, "{early:?} vs plain {plain:?}");
            assert!(early.while_refreshing <= 30, "{early:?} vs plain {plain:?}");
            assert!(early.in_first_ms * 20 <= plain.in_first_ms);
        }
    }
}
