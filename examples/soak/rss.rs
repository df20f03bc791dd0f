//! The replicas' memory over the soak: RSS samples, each with the role its process had then, and the growth
//! judgement. A leader holds more than a follower (it writes: Events, placement's registry reads, the
//! requests in flight), and a process that changes roles steps up and down with them; growth is judged
//! like for like, a role's RSS late in a process's life against the same role's earlier.

use k8s_openapi::jiff::Timestamp;

use crate::replicas::{Memory, NAMES};

pub struct RssSample {
    /// Seconds since the soak started (the plot's x).
    pub at: f64,
    /// When it was taken, to find the role in the Lease's terms.
    pub wall: Timestamp,
    pub replica: usize,
    pub incarnation: u32,
    pub memory: Memory,
}

/// A run of consecutive samples of one process in one role: how its memory moves from term to term.
#[derive(Debug, Clone, PartialEq)]
pub struct Stretch {
    pub leader: bool,
    /// Seconds since the soak started, first and last sample.
    pub from: f64,
    pub to: f64,
    /// Means over the stretch, MiB.
    pub rss: f64,
    pub anon: f64,
}

/// Each process (replica, incarnation) with its stretches in order, for the report and rss.csv readers.
pub fn stretches(
    samples: &[RssSample],
    terms: &[(String, Timestamp, Timestamp)],
) -> Vec<((usize, u32), Vec<Stretch>)> {
    let mut by_process: std::collections::BTreeMap<(usize, u32), Vec<&RssSample>> =
        std::collections::BTreeMap::new();
    for s in samples {
        by_process
            .entry((s.replica, s.incarnation))
            .or_default()
            .push(s);
    }
    by_process
        .into_iter()
        .map(|(process, samples)| {
            let mut out: Vec<(bool, Vec<&RssSample>)> = Vec::new();
            for s in samples {
                let leader = led_at(terms, s.replica, s.wall);
                match out.last_mut() {
                    Some((role, run)) if *role == leader => run.push(s),
                    _ => out.push((leader, vec![s])),
                }
            }
            let out = out
                .into_iter()
                .map(|(leader, run)| Stretch {
                    leader,
                    from: run[0].at,
                    to: run[run.len() - 1].at,
                    rss: mean(&run.iter().map(|s| s.memory.rss).collect::<Vec<_>>()),
                    anon: mean(&run.iter().map(|s| s.memory.anon).collect::<Vec<_>>()),
                })
                .collect();
            (process, out)
        })
        .collect()
}

/// Which samples a replica's growth compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compared {
    /// Its RSS as leader, and as follower: the larger growth of the two.
    BothRoles,
    LeaderOnly,
    FollowerOnly,
    /// No role in both windows: every sample, whatever its role.
    AllSamples,
}

impl Compared {
    pub fn describe(self) -> &'static str {
        match self {
            Compared::BothRoles => "as leader and as follower, the larger",
            Compared::LeaderOnly => "as leader",
            Compared::FollowerOnly => "as follower",
            Compared::AllSamples => "all samples (no role in both windows)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Growth {
    pub replica: usize,
    pub growth: f64,
    pub compared: Compared,
}

/// Whether replica `replica` led at `wall`: inside one of its terms (acquired to the last renewal seen).
pub fn led_at(terms: &[(String, Timestamp, Timestamp)], replica: usize, wall: Timestamp) -> bool {
    terms
        .iter()
        .any(|(r, acquired, renewed)| r == NAMES[replica] && *acquired <= wall && wall <= *renewed)
}

/// Per replica, the growth of its longest-lived process's RSS: the mean over the last fifth of its life
/// against the mean over the fifth after its first (warm-up) fifth, for each role it had in both windows
/// (the larger growth counts); when no role is in both, the earlier window widens to everything between
/// warm-up and the last fifth; when still none, every sample is compared whatever its role (so a process
/// is never left unjudged).
pub fn rss_growth(samples: &[RssSample], terms: &[(String, Timestamp, Timestamp)]) -> Vec<Growth> {
    let mut out = Vec::new();
    for replica in 0..NAMES.len() {
        let mut by_incarnation: std::collections::BTreeMap<u32, Vec<(bool, f64)>> =
            std::collections::BTreeMap::new();
        for s in samples.iter().filter(|s| s.replica == replica) {
            by_incarnation
                .entry(s.incarnation)
                .or_default()
                .push((led_at(terms, replica, s.wall), s.memory.rss));
        }
        let Some(longest) = by_incarnation.values().max_by_key(|v| v.len()) else {
            continue;
        };
        let n = longest.len();
        if n < 10 {
            continue;
        }
        let late = &longest[4 * n / 5..];
        let judged = like_for_like(&longest[n / 5..2 * n / 5], late)
            .or_else(|| like_for_like(&longest[n / 5..4 * n / 5], late))
            .unwrap_or_else(|| {
                let all = |s: &[(bool, f64)]| s.iter().map(|(_, mib)| *mib).collect::<Vec<_>>();
                (
                    mean(&all(late)) / mean(&all(&longest[n / 5..2 * n / 5])) - 1.0,
                    Compared::AllSamples,
                )
            });
        out.push(Growth {
            replica,
            growth: judged.0,
            compared: judged.1,
        });
    }
    out
}

/// Samples a role needs in each window to be compared (samples are 2 s apart).
const MIN_SAMPLES: usize = 3;

/// The larger growth over the roles present in both windows, or None when no role is.
fn like_for_like(early: &[(bool, f64)], late: &[(bool, f64)]) -> Option<(f64, Compared)> {
    let growth = |leader: bool| {
        let of = |s: &[(bool, f64)]| -> Vec<f64> {
            s.iter()
                .filter(|(l, _)| *l == leader)
                .map(|(_, mib)| *mib)
                .collect()
        };
        let (e, l) = (of(early), of(late));
        (e.len() >= MIN_SAMPLES && l.len() >= MIN_SAMPLES).then(|| mean(&l) / mean(&e) - 1.0)
    };
    match (growth(true), growth(false)) {
        (Some(a), Some(b)) => Some((a.max(b), Compared::BothRoles)),
        (Some(a), None) => Some((a, Compared::LeaderOnly)),
        (None, Some(b)) => Some((b, Compared::FollowerOnly)),
        (None, None) => None,
    }
}

fn mean(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_583_200;

    /// One process of replica a, a sample every 2 s with the given MiB; it leads from `lead_from` to
    /// `lead_to` (sample indices).
    fn process(
        mibs: &[f64],
        lead: Option<(usize, usize)>,
    ) -> (Vec<RssSample>, Vec<(String, Timestamp, Timestamp)>) {
        let at = |i: usize| Timestamp::from_second(T0 + 2 * i as i64).unwrap();
        let samples = mibs
            .iter()
            .enumerate()
            .map(|(i, mib)| RssSample {
                at: 2.0 * i as f64,
                wall: at(i),
                replica: 0,
                incarnation: 1,
                memory: Memory {
                    rss: *mib,
                    anon: *mib,
                    file: 0.0,
                },
            })
            .collect();
        let terms = lead
            .map(|(from, to)| vec![("a".to_owned(), at(from), at(to))])
            .unwrap_or_default();
        (samples, terms)
    }

    #[test]
    fn a_follower_that_leads_late_has_not_grown_when_each_role_is_flat() {
        // 50 samples: follower at 20 MiB, then leader at 23 MiB from sample 30 on (the last fifth is 40..).
        // Compared whatever the role (the old judgement), that is +15%.
        let mibs: Vec<f64> = (0..50).map(|i| if i < 30 { 20.0 } else { 23.0 }).collect();
        let (samples, terms) = process(&mibs, Some((30, 49)));
        let unsplit = rss_growth(&samples, &[]);
        assert!(
            (unsplit[0].growth - 0.15).abs() < 1e-9,
            "positive control: {unsplit:?}"
        );
        // The leader's RSS is in the last fifth only, the follower's in the second fifth only: no role in both,
        // so the earlier window widens (samples 10..40 hold the leader's 30..40) and the leader is compared.
        let judged = rss_growth(&samples, &terms);
        assert_eq!(judged[0].compared, Compared::LeaderOnly);
        assert!(judged[0].growth.abs() < 1e-9, "{judged:?}");
    }

    #[test]
    fn a_role_whose_rss_grows_is_growth() {
        // Leader throughout after sample 5, growing 20 → 26 MiB: +30% whatever the judgement.
        let mibs: Vec<f64> = (0..50).map(|i| 20.0 + 6.0 * f64::from(i) / 49.0).collect();
        let (samples, terms) = process(&mibs, Some((5, 49)));
        let judged = rss_growth(&samples, &terms);
        assert_eq!(judged[0].compared, Compared::LeaderOnly);
        assert!(judged[0].growth > 0.10, "{judged:?}");
    }

    #[test]
    fn the_larger_of_both_roles_counts() {
        // Alternating roles every 2 samples; the follower flat at 10, the leader 12 early and 14 late.
        let mibs: Vec<f64> = (0..50)
            .map(|i| match (i / 2 % 2 == 0, i >= 40) {
                (true, false) => 12.0,
                (true, true) => 14.0,
                (false, _) => 10.0,
            })
            .collect();
        let at = |i: usize| Timestamp::from_second(T0 + 2 * i as i64).unwrap();
        let (samples, _) = process(&mibs, None);
        let terms: Vec<_> = (0..50)
            .step_by(4)
            .map(|i| ("a".to_owned(), at(i), at(i + 1)))
            .collect();
        let judged = rss_growth(&samples, &terms);
        assert_eq!(judged[0].compared, Compared::BothRoles);
        assert!(
            (judged[0].growth - (14.0 / 12.0 - 1.0)).abs() < 1e-9,
            "{judged:?}"
        );
    }

    #[test]
    fn another_replica_s_terms_do_not_count_and_short_lives_are_not_judged() {
        let (samples, _) = process(&[20.0; 50], None);
        let b_led = vec![(
            "b".to_owned(),
            Timestamp::from_second(T0).unwrap(),
            Timestamp::from_second(T0 + 100).unwrap(),
        )];
        assert_eq!(
            rss_growth(&samples, &b_led)[0].compared,
            Compared::FollowerOnly
        );
        let (short, _) = process(&[20.0; 9], None);
        assert!(rss_growth(&short, &[]).is_empty());
    }

    #[test]
    fn stretches_follow_the_role_within_each_process() {
        // Follower at 10 MiB for 5 samples, leader at 12 for 3, follower at 11 for 2; then a new process.
        let mibs = [10.0, 10.0, 10.0, 10.0, 10.0, 12.0, 12.0, 12.0, 11.0, 11.0];
        let (mut samples, terms) = process(&mibs, Some((5, 7)));
        let (restarted, _) = process(&[9.0; 3], None);
        samples.extend(restarted.into_iter().map(|mut s| {
            s.incarnation = 2;
            s.at += 100.0;
            s
        }));
        let got = stretches(&samples, &terms);
        type Summary = (bool, f64, f64, f64);
        let summary: Vec<(u32, Vec<Summary>)> = got
            .iter()
            .map(|((_, incarnation), s)| {
                (
                    *incarnation,
                    s.iter().map(|s| (s.leader, s.from, s.to, s.rss)).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    vec![
                        (false, 0.0, 8.0, 10.0),
                        (true, 10.0, 14.0, 12.0),
                        (false, 16.0, 18.0, 11.0)
                    ]
                ),
                (2, vec![(false, 100.0, 104.0, 9.0)]),
            ]
        );
    }
}
