//! Charts as SVG, drawn with `plotters`: an evolution's validation score per iteration, and a
//! canary's arms over time. Served as resources (`image/svg+xml`) and written by `aop evolve`.

use aop_core::deployment::{Canary, CheckPoint, Deployment};
use aop_core::services::evolution::PerformanceHistory;
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

pub const SVG: &str = "image/svg+xml";
const SIZE: (u32, u32) = (720, 400);
const BEST: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const MEAN: RGBColor = RGBColor(0x7f, 0x7f, 0x7f);
const CANDIDATE: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const SHARE: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

fn failed(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// The series' names, boxed in the lower right corner.
fn legend<'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(failed)
}

/// The best and the mean validation score after each iteration of a run, with the seed's score
/// as a dashed line.
///
/// # Errors
/// When drawing fails (it does not for finite scores).
pub fn evolution(history: &PerformanceHistory) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let last = history.points.last().map_or(1, |p| p.iteration.max(1));
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("evolution {}: validation score", history.evolution_id),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0u32..last, 0f64..1f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("iteration")
            .y_desc("validation score")
            .draw()
            .map_err(failed)?;
        let finite = |x: f64| x.is_finite().then_some(x.clamp(0.0, 1.0));
        chart
            .draw_series(LineSeries::new(
                history
                    .points
                    .iter()
                    .filter_map(|p| finite(p.best_val).map(|v| (p.iteration, v))),
                BEST.stroke_width(2),
            ))
            .map_err(failed)?
            .label("best")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BEST.stroke_width(2)));
        chart
            .draw_series(
                history
                    .points
                    .iter()
                    .filter_map(|p| finite(p.mean_val).map(|v| (p.iteration, v)))
                    .map(|(x, y)| Circle::new((x, y), 3, MEAN.filled())),
            )
            .map_err(failed)?
            .label("mean of the pool")
            .legend(|(x, y)| Circle::new((x + 9, y), 3, MEAN.filled()));
        if let Some(seed) = history.seed_score.and_then(finite) {
            chart
                .draw_series(DashedLineSeries::new(
                    [(0, seed), (last, seed)],
                    6,
                    4,
                    MEAN.into(),
                ))
                .map_err(failed)?
                .label("seed")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], MEAN));
        }
        legend(&mut chart)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

/// A canary's arms over time: the mean score of the baseline and of the candidate at each of
/// its decisions (its history), and the candidate's share of new sessions from the alias moves
/// it made (`moves`, oldest first).
///
/// # Errors
/// When drawing fails.
pub fn canary(canary: &Canary, moves: &[Deployment]) -> Result<String, String> {
    let minutes = |at: i64| (at - canary.started_at) as f64 / 60_000.0;
    let share = |routes: &[aop_core::AliasRoute]| {
        let total: u32 = routes.iter().map(|r| r.weight).sum();
        let candidate: u32 = routes
            .iter()
            .filter(|r| r.version == canary.candidate)
            .map(|r| r.weight)
            .sum();
        if total == 0 {
            0.0
        } else {
            f64::from(candidate) / f64::from(total)
        }
    };
    let own: Vec<&Deployment> = moves
        .iter()
        .filter(|m| m.canary_id.as_ref() == Some(&canary.canary_id))
        .collect();
    // (minutes since the start, baseline score, candidate score) at every decision kept; a
    // canary from before decisions were kept has its last one.
    let last = canary
        .last_decision
        .as_ref()
        .map(|d| CheckPoint::of(d, canary.candidate_weight()));
    let kept = if canary.history.is_empty() {
        last.as_slice()
    } else {
        canary.history.as_slice()
    };
    let scores: Vec<(f64, Option<f64>, Option<f64>)> = kept
        .iter()
        .map(|p| (minutes(p.at), p.baseline_score, p.candidate_score))
        .collect();
    // (minutes, candidate share 0..1) at every move of the alias.
    let shares: Vec<(f64, f64)> = own
        .iter()
        .map(|m| (minutes(m.created_at), share(&m.to)))
        .collect();
    let end = scores
        .iter()
        .map(|p| p.0)
        .chain(shares.iter().map(|p| p.0))
        .fold(1.0_f64, f64::max)
        .max(minutes(canary.updated_at));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "canary {}: v{} against v{} ({})",
                    canary.canary_id,
                    canary.candidate,
                    canary.baseline,
                    canary.status.as_str()
                ),
                ("sans-serif", 16),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(48)
            .build_cartesian_2d(0f64..end, 0f64..1f64)
            .map_err(failed)?;
        chart
            .configure_mesh()
            .x_desc("minutes since the start")
            .y_desc("mean score / candidate share")
            .draw()
            .map_err(failed)?;
        for (name, color, pick) in [
            (
                format!("baseline v{}", canary.baseline),
                MEAN,
                (|p: &(f64, Option<f64>, Option<f64>)| p.1) as fn(&_) -> Option<f64>,
            ),
            (format!("candidate v{}", canary.candidate), CANDIDATE, |p| {
                p.2
            }),
        ] {
            let arm: Vec<(f64, f64)> = scores
                .iter()
                .filter_map(|p| pick(p).map(|s| (p.0, s.clamp(0.0, 1.0))))
                .collect();
            chart
                .draw_series(arm.iter().map(|xy| Circle::new(*xy, 3, color.filled())))
                .map_err(failed)?;
            chart
                .draw_series(LineSeries::new(arm, color.stroke_width(2)))
                .map_err(failed)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        // The share holds until the next move: a step line.
        let mut steps = Vec::new();
        for (i, p) in shares.iter().enumerate() {
            if i > 0 {
                steps.push((p.0, shares[i - 1].1));
            }
            steps.push(*p);
        }
        if let Some(last) = shares.last() {
            steps.push((end, last.1));
        }
        chart
            .draw_series(LineSeries::new(steps, SHARE.stroke_width(1)))
            .map_err(failed)?
            .label("candidate share")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], SHARE));
        legend(&mut chart)?;
        root.present().map_err(failed)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aop_core::services::evolution::HistoryPoint;

    fn point(iteration: u32, best: f64, mean: f64) -> HistoryPoint {
        HistoryPoint {
            iteration,
            outcome: "accepted".into(),
            best_val: best,
            mean_val: mean,
            metric_calls: iteration * 10,
            cost_usd: 0.0,
            at: 0,
        }
    }

    /// The `points` attribute of each polyline, as coordinate pairs.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.split("<polyline")
            .skip(1)
            .map(|p| {
                let at = p.find("points=\"").unwrap() + 8;
                p[at..p[at..].find('"').unwrap() + at]
                    .split_whitespace()
                    .map(|xy| {
                        let (x, y) = xy.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn an_evolution_chart_draws_the_best_score_rising_per_iteration() {
        let history = PerformanceHistory {
            evolution_id: aop_core::evolution::EvolutionId::generate(),
            seed_score: Some(0.4),
            best_score: Some(0.8),
            points: vec![point(0, 0.4, 0.4), point(1, 0.6, 0.5), point(2, 0.8, 0.55)],
        };
        let svg = evolution(&history).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("validation score"));
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(
            texts.contains(&"best") && texts.contains(&"seed"),
            "a legend names the lines"
        );
        let best = polylines(&svg)
            .into_iter()
            .find(|l| l.len() == 3)
            .expect("a three-point line for the best score");
        // SVG y grows downwards: a rising score has falling y.
        assert!(best[0].1 > best[1].1 && best[1].1 > best[2].1, "{best:?}");
        assert!(best[0].0 < best[1].0 && best[1].0 < best[2].0, "{best:?}");
        assert_eq!(
            svg.matches("<circle").count(),
            4,
            "one mark per iteration's mean, and the legend's"
        );
    }

    #[test]
    fn an_evolution_without_iterations_still_draws() {
        let history = PerformanceHistory {
            evolution_id: aop_core::evolution::EvolutionId::generate(),
            seed_score: None,
            best_score: None,
            points: Vec::new(),
        };
        assert!(evolution(&history).unwrap().contains("</svg>"));
    }
}
