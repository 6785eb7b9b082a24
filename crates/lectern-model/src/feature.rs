//! Feature flags: the features an operator can switch off (or on) at run time, globally or for
//! one cohort, and how a set of flags decides whether a feature is on.
//!
//! The flags live in one replicated document (`flags/cluster`, written by `flags.rs`), so a
//! flag set on one node reaches every node through the mesh like any other change. This module
//! is only the evaluation, pure and small: a [`FlagSet`] read from that document answers
//! [`FlagSet::enabled`] for a feature in a cohort. Precedence: a cohort's own setting wins over
//! the global one, and a feature nobody set is on. So "chat off everywhere except cohort c1" is
//! two flags (global off, c1 on), and unsetting a cohort's flag makes it follow the global one
//! again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::CohortId;
use crate::reject::{RejectCode, Rejection};

/// A feature that can be switched off at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    /// A session's chat (`chat.send`, `chat.delete`).
    Chat,
    /// A session's polls (`poll.create`, `poll.vote`, `poll.close`, `poll.reveal`).
    Polls,
    /// A cohort's leaderboard (its stream, `leaderboard/me`, `leaderboard.privacy`).
    Leaderboard,
    /// Notification emails (the job runner skips them; in-app notifications still arrive).
    Email,
    /// The course copilot. Nothing implements it yet; the flag exists so that an operator can
    /// switch it off before it ships, and it will be honoured by whatever serves it.
    Copilot,
}

impl Feature {
    /// Every feature, in the order `lectern flags list` shows them.
    pub const ALL: [Feature; 5] = [
        Feature::Chat,
        Feature::Polls,
        Feature::Leaderboard,
        Feature::Email,
        Feature::Copilot,
    ];

    /// The feature's name, as in flags, URLs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Chat => "chat",
            Feature::Polls => "polls",
            Feature::Leaderboard => "leaderboard",
            Feature::Email => "email",
            Feature::Copilot => "copilot",
        }
    }

    /// Parses a name written by [`Feature::as_str`].
    pub fn parse(s: &str) -> Option<Feature> {
        Feature::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl std::fmt::Display for Feature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The flags of the cluster: what each feature is set to, globally and per cohort. Features not
/// named are on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlagSet {
    global: BTreeMap<Feature, bool>,
    cohorts: BTreeMap<CohortId, BTreeMap<Feature, bool>>,
}

impl FlagSet {
    /// No flags: every feature is on.
    pub fn new() -> FlagSet {
        FlagSet::default()
    }

    /// Sets `feature` to `enabled`, for `cohort` or (None) globally.
    pub fn set(&mut self, feature: Feature, cohort: Option<&CohortId>, enabled: bool) {
        match cohort {
            None => {
                self.global.insert(feature, enabled);
            }
            Some(c) => {
                self.cohorts
                    .entry(c.clone())
                    .or_default()
                    .insert(feature, enabled);
            }
        }
    }

    /// Forgets the setting of `feature` for `cohort` or (None) the global one.
    pub fn unset(&mut self, feature: Feature, cohort: Option<&CohortId>) {
        match cohort {
            None => {
                self.global.remove(&feature);
            }
            Some(c) => {
                if let Some(m) = self.cohorts.get_mut(c) {
                    m.remove(&feature);
                    if m.is_empty() {
                        self.cohorts.remove(c);
                    }
                }
            }
        }
    }

    /// Whether `feature` is on in `cohort` (None: outside any cohort, the global setting alone):
    /// the cohort's setting if it has one, else the global one, else on.
    pub fn enabled(&self, feature: Feature, cohort: Option<&CohortId>) -> bool {
        cohort
            .and_then(|c| self.cohorts.get(c))
            .and_then(|m| m.get(&feature))
            .or_else(|| self.global.get(&feature))
            .copied()
            .unwrap_or(true)
    }

    /// `Ok` if `feature` is on in `cohort`, else the `feature_disabled` refusal every transport
    /// sends.
    pub fn check(&self, feature: Feature, cohort: Option<&CohortId>) -> Result<(), Rejection> {
        if self.enabled(feature, cohort) {
            Ok(())
        } else {
            Err(Rejection::new(
                RejectCode::FeatureDisabled,
                format!("{feature} is switched off by the operators"),
            ))
        }
    }

    /// Every feature's effective value in `cohort`: what the page reads (`GET /api/flags`).
    pub fn effective(&self, cohort: Option<&CohortId>) -> Value {
        let map: serde_json::Map<String, Value> = Feature::ALL
            .iter()
            .map(|f| (f.as_str().to_owned(), Value::Bool(self.enabled(*f, cohort))))
            .collect();
        Value::Object(map)
    }

    /// What is set, as the operator's listing shows it: `{global: {feature: bool}, cohorts:
    /// {cohort: {feature: bool}}}`.
    pub fn to_json(&self) -> Value {
        let names = |m: &BTreeMap<Feature, bool>| -> serde_json::Map<String, Value> {
            m.iter()
                .map(|(f, on)| (f.as_str().to_owned(), Value::Bool(*on)))
                .collect()
        };
        let cohorts: serde_json::Map<String, Value> = self
            .cohorts
            .iter()
            .map(|(c, m)| (c.as_str().to_owned(), Value::Object(names(m))))
            .collect();
        json!({"global": names(&self.global), "cohorts": cohorts})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str) -> CohortId {
        CohortId::new(id).expect("a valid cohort id")
    }

    #[test]
    fn a_feature_nobody_set_is_on_everywhere() {
        let flags = FlagSet::new();
        for f in Feature::ALL {
            assert!(flags.enabled(f, None));
            assert!(flags.enabled(f, Some(&c("c1"))));
        }
    }

    #[test]
    fn the_global_setting_applies_to_every_cohort_without_its_own() {
        let mut flags = FlagSet::new();
        flags.set(Feature::Chat, None, false);
        assert!(!flags.enabled(Feature::Chat, None));
        assert!(!flags.enabled(Feature::Chat, Some(&c("c1"))));
        assert!(flags.enabled(Feature::Polls, Some(&c("c1"))));
        let refused = flags
            .check(Feature::Chat, Some(&c("c1")))
            .expect_err("chat is off");
        assert_eq!(refused.code, RejectCode::FeatureDisabled);
        assert_eq!(refused.code.as_str(), "feature_disabled");
    }

    #[test]
    fn a_cohorts_setting_wins_over_the_global_one_both_ways() {
        let mut flags = FlagSet::new();
        flags.set(Feature::Chat, None, false);
        flags.set(Feature::Chat, Some(&c("c1")), true);
        flags.set(Feature::Polls, Some(&c("c2")), false);
        assert!(flags.enabled(Feature::Chat, Some(&c("c1"))));
        assert!(!flags.enabled(Feature::Chat, Some(&c("c2"))));
        assert!(!flags.enabled(Feature::Polls, Some(&c("c2"))));
        assert!(flags.enabled(Feature::Polls, Some(&c("c1"))));
        assert!(flags.enabled(Feature::Polls, None));
    }

    #[test]
    fn unsetting_a_cohorts_flag_makes_it_follow_the_global_one_again() {
        let mut flags = FlagSet::new();
        flags.set(Feature::Leaderboard, None, false);
        flags.set(Feature::Leaderboard, Some(&c("c1")), true);
        flags.unset(Feature::Leaderboard, Some(&c("c1")));
        assert!(!flags.enabled(Feature::Leaderboard, Some(&c("c1"))));
        flags.unset(Feature::Leaderboard, None);
        assert!(flags.enabled(Feature::Leaderboard, Some(&c("c1"))));
        assert_eq!(flags, FlagSet::new(), "nothing is left behind");
    }

    #[test]
    fn names_round_trip_and_the_listing_shows_what_is_set() {
        for f in Feature::ALL {
            assert_eq!(Feature::parse(f.as_str()), Some(f));
        }
        assert_eq!(Feature::parse("teleport"), None);
        let mut flags = FlagSet::new();
        flags.set(Feature::Email, None, false);
        flags.set(Feature::Copilot, Some(&c("c1")), false);
        assert_eq!(
            flags.to_json(),
            json!({"global": {"email": false}, "cohorts": {"c1": {"copilot": false}}})
        );
        assert_eq!(flags.effective(Some(&c("c1")))["copilot"], json!(false));
        assert_eq!(flags.effective(None)["copilot"], json!(true));
        assert_eq!(flags.effective(None)["email"], json!(false));
    }
}
