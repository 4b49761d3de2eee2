//! Parent selection from the per-case Pareto front: for every validation case, the candidates
//! tied for its best score form that case's front; a candidate another one matches or beats on
//! every case (and beats on one) is dropped; a parent is drawn in proportion to how many fronts a
//! candidate is on. Keeps candidates that are best somewhere, not only the best on average.

use crate::stats::SplitMix64;

const TIE: f64 = 1e-9;

/// How many case fronts each candidate is on, after dropping dominated candidates. `scores[i]`
/// are candidate `i`'s validation scores, every row in the same case order.
pub fn front_counts(scores: &[Vec<f64>]) -> Vec<usize> {
    let n = scores.len();
    let cases = scores.iter().map(Vec::len).min().unwrap_or(0);
    let dominated: Vec<bool> = (0..n)
        .map(|a| (0..n).any(|b| b != a && dominates(&scores[b], &scores[a], cases)))
        .collect();
    let kept: Vec<usize> = (0..n).filter(|i| !dominated[*i]).collect();
    let mut counts = vec![0; n];
    // Case by case (a column of `scores`): who ties for the best.
    (0..cases).for_each(|case| {
        let best = kept
            .iter()
            .map(|i| scores[*i][case])
            .fold(f64::NEG_INFINITY, f64::max);
        for i in &kept {
            if (scores[*i][case] - best).abs() <= TIE {
                counts[*i] += 1;
            }
        }
    });
    counts
}

/// `b` is at least as good as `a` on every case and better on one.
fn dominates(b: &[f64], a: &[f64], cases: usize) -> bool {
    let mut better = false;
    for case in 0..cases {
        if b[case] + TIE < a[case] {
            return false;
        }
        if b[case] > a[case] + TIE {
            better = true;
        }
    }
    better
}

/// Draws a candidate in proportion to its front count; the best mean when no one is on a front.
pub fn pick(scores: &[Vec<f64>], rng: &mut SplitMix64) -> usize {
    let counts = front_counts(scores);
    let total: usize = counts.iter().sum();
    if total == 0 {
        return best_mean(scores);
    }
    let mut ticket = rng.below(total);
    for (i, c) in counts.iter().enumerate() {
        if ticket < *c {
            return i;
        }
        ticket -= c;
    }
    best_mean(scores)
}

/// The candidate with the highest mean score (the earliest on a tie).
pub fn best_mean(scores: &[Vec<f64>]) -> usize {
    let mean = |s: &Vec<f64>| {
        if s.is_empty() {
            0.0
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        }
    };
    let mut best = 0;
    for (i, s) in scores.iter().enumerate() {
        if mean(s) > mean(&scores[best]) + TIE {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specialists_stay_on_the_front_and_the_dominated_drop_off() {
        let scores = vec![
            vec![1.0, 0.0, 0.5], // best on case 0
            vec![0.0, 1.0, 0.5], // best on case 1
            vec![0.0, 0.0, 0.5], // dominated by both
            vec![0.5, 0.5, 1.0], // best on case 2
        ];
        assert_eq!(front_counts(&scores), [1, 1, 0, 1]);
        let mut rng = SplitMix64::new(7);
        let mut picked = [0; 4];
        for _ in 0..3_000 {
            picked[pick(&scores, &mut rng)] += 1;
        }
        assert_eq!(picked[2], 0, "a dominated candidate is never a parent");
        assert!(
            picked.iter().enumerate().all(|(i, n)| i == 2 || *n > 800),
            "{picked:?}"
        );
    }

    #[test]
    fn ties_share_a_front_and_identical_candidates_both_stay() {
        let scores = vec![vec![1.0, 1.0], vec![1.0, 1.0]];
        assert_eq!(front_counts(&scores), [2, 2]);
        assert_eq!(
            best_mean(&[vec![0.2, 0.4], vec![0.5, 0.5], vec![0.5, 0.5]]),
            1
        );
    }
}
