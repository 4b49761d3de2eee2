//! The statistics deployments are decided with: running summaries, the normal distribution,
//! the probability that one arm beats another and the expected loss of shipping it, and
//! always-valid confidence sequences (so checking every few minutes does not inflate false
//! alarms). Pure functions; nothing here imports the rest of the crate.

/// SplitMix64: a small, seedable, reproducible generator, for sampling that must come out the
/// same when a step is run again (a redelivered evolution iteration).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform on 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }
}

/// Count, mean and the sum of squared differences from the mean (Welford), of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
}

impl Summary {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut s = Self::default();
        values.into_iter().for_each(|x| s.push(x));
        s
    }

    /// Sample variance (n - 1 in the denominator); 0 below two values.
    pub fn variance(&self) -> f64 {
        if self.n > 1 {
            (self.m2 / (self.n - 1) as f64).max(0.0)
        } else {
            0.0
        }
    }
}

/// The complementary error function (W. J. Cody's rational approximations through
/// `erfc(x) = t·exp(-x² + P(t))`, Numerical Recipes' `erfcc`): relative error below 1.2e-7.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Φ(x), the standard normal distribution function.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// φ(x), the standard normal density.
pub fn normal_pdf(x: f64) -> f64 {
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// How B compares with A: Δ = mean_B − mean_A, its standard error, P(B > A) = Φ(Δ/se) and
/// the expected loss of shipping B, se·φ(Δ/se) − Δ·Φ(−Δ/se).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub delta: f64,
    pub se: f64,
    pub prob_better: f64,
    pub expected_loss: f64,
}

/// Compares two arms. With no spread at all, the sign of Δ decides.
pub fn compare(a: &Summary, b: &Summary) -> Comparison {
    let delta = b.mean - a.mean;
    let se = (a.variance() / a.n.max(1) as f64 + b.variance() / b.n.max(1) as f64).sqrt();
    if se <= f64::EPSILON {
        let prob_better = if delta > 0.0 {
            1.0
        } else if delta < 0.0 {
            0.0
        } else {
            0.5
        };
        return Comparison {
            delta,
            se,
            prob_better,
            expected_loss: (-delta).max(0.0),
        };
    }
    let z = delta / se;
    Comparison {
        delta,
        se,
        prob_better: normal_cdf(z),
        expected_loss: (se * normal_pdf(z) - delta * normal_cdf(-z)).max(0.0),
    }
}

/// Half-width of a (1 − α) always-valid confidence sequence for a mean after `n` values of
/// variance `variance`: the two-sided normal-mixture boundary
/// √((nσ² + ρ)·ln((nσ² + ρ)/(ρα²))) / n, with ρ = 100σ² (tightest around a few hundred values).
/// It holds at every `n` at once, so it may be checked as often as one likes.
pub fn cs_half_width(n: u64, variance: f64, alpha: f64) -> f64 {
    if n == 0 {
        return f64::INFINITY;
    }
    let v = n as f64 * variance;
    let rho = 100.0 * variance.max(1e-12);
    ((v + rho) * ((v + rho) / (rho * alpha * alpha)).ln()).sqrt() / n as f64
}

/// An always-valid interval for mean_B − mean_A at level α (α/2 to each arm's sequence).
pub fn cs_difference(a: &Summary, b: &Summary, alpha: f64) -> (f64, f64) {
    let wa = cs_half_width(a.n, a.variance(), alpha / 2.0);
    let wb = cs_half_width(b.n, b.variance(), alpha / 2.0);
    let delta = b.mean - a.mean;
    (delta - wa - wb, delta + wa + wb)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms): about 15 significant digits.
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// An anytime-valid p-value for a sample-ratio mismatch: were `observed` counts drawn with
/// shares `expected`? The reciprocal of a Beta-binomial mixture Bayes factor against the
/// expected share (Lindon & Malek's sequential test), so it may be checked after every
/// session; a χ² test checked that often pauses healthy canaries. `None` when nothing was
/// observed.
pub fn sample_ratio_p(observed: [u64; 2], expected: [f64; 2]) -> Option<f64> {
    let shares = expected[0] + expected[1];
    if observed[0] + observed[1] == 0 || shares <= 0.0 {
        return None;
    }
    let p = (expected[1] / shares).clamp(1e-9, 1.0 - 1e-9);
    // A prior worth 100 observations, centred on the expected share.
    let (a, b) = (100.0 * p, 100.0 * (1.0 - p));
    let (n0, n1) = (observed[0] as f64, observed[1] as f64);
    let ln_bf = ln_beta(a + n1, b + n0) - ln_beta(a, b) - (n1 * p.ln() + n0 * (1.0 - p).ln());
    Some((-ln_bf).exp().min(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_distribution_matches_its_tables() {
        for (x, phi) in [
            (0.0, 0.5),
            (1.0, 0.841_344_746),
            (1.644_853_627, 0.95),
            (-1.959_963_985, 0.025),
            (3.0, 0.998_650_102),
        ] {
            assert!((normal_cdf(x) - phi).abs() < 1e-6, "Φ({x})");
        }
        assert!((normal_pdf(0.0) - 0.398_942_280).abs() < 1e-9);
        // Γ(5) = 24, Γ(1/2) = √π.
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn summaries_match_the_textbook_formulas() {
        let s = Summary::of([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.n, 8);
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.variance() - 32.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn a_better_arm_is_likely_better_and_cheap_to_ship() {
        let a = Summary {
            n: 400,
            mean: 0.70,
            m2: 0.0625 * 399.0,
        };
        let b = Summary { mean: 0.75, ..a };
        let c = compare(&a, &b);
        assert!((c.se - (2.0 * 0.0625 / 400.0_f64).sqrt()).abs() < 1e-12);
        assert!(c.prob_better > 0.99, "{c:?}");
        assert!(c.expected_loss < 1e-4, "{c:?}");
        let flipped = compare(&b, &a);
        assert!(flipped.prob_better < 0.01);
        assert!((flipped.expected_loss - 0.05).abs() < 1e-3, "{flipped:?}");
    }

    #[test]
    fn confidence_sequences_are_wider_than_fixed_intervals_and_shrink() {
        let fixed = 1.96 * (0.0625_f64 / 1000.0).sqrt();
        let w1000 = cs_half_width(1000, 0.0625, 0.05);
        assert!(w1000 > fixed && w1000 < 3.0 * fixed, "{w1000} vs {fixed}");
        assert!(cs_half_width(10_000, 0.0625, 0.05) < w1000);
        assert!(cs_half_width(0, 0.0625, 0.05).is_infinite());
    }

    #[test]
    fn a_skewed_split_is_a_sample_ratio_mismatch() {
        assert!(sample_ratio_p([900, 100], [90.0, 10.0]).unwrap() > 0.5);
        assert!(sample_ratio_p([700, 300], [90.0, 10.0]).unwrap() < 1e-6);
        assert_eq!(sample_ratio_p([0, 0], [90.0, 10.0]), None);
        // Anytime-valid: a fair split checked after every one of 20,000 sessions rarely alarms.
        let mut state = 7u64;
        let mut alarms = 0;
        for _ in 0..20 {
            let mut counts = [0u64; 2];
            let mut alarmed = false;
            for _ in 0..1_000 {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                counts[usize::from((state >> 33).is_multiple_of(10))] += 1;
                alarmed |= sample_ratio_p(counts, [90.0, 10.0]).unwrap() < 0.01;
            }
            alarms += u32::from(alarmed);
        }
        assert!(alarms <= 1, "{alarms} of 20 fair runs alarmed at p < 0.01");
    }
}
