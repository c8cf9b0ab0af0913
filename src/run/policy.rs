//! What happens after an attempt: retry with the failure, hand over to the fallback agent,
//! retry an infrastructure failure after a growing wait, or stop (the circuit breaker).
//!
//! May not: act: it decides from the attempts recorded so far.

use super::Policy;
use crate::record::{Role, Status};
use std::time::Duration;

/// What to do next with a unit, from its attempts so far.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Next {
    Attempt {
        role: Role,
        backoff: Option<Duration>,
    },
    Ready,
    Final {
        status: Status,
        message: String,
    },
    Skip,
}

/// What [`decide`] needs of an attempt.
#[derive(Debug, Clone)]
pub(super) struct AttemptView {
    pub(super) role: Role,
    pub(super) status: Status,
    pub(super) infra: bool,
    /// Whether another attempt may do better (false e.g. for refused credentials).
    pub(super) retryable: bool,
    pub(super) message: String,
}

/// The retry policy: a change that failed gets `retries` fresh attempts, then the fallback
/// agent one; an attempt stopped by the infrastructure is repeated (with a growing wait) up to
/// `infra_retries` times in a row, apart from that budget, unless the breaker is open.
pub(super) fn decide(
    attempts: &[AttemptView],
    retries: u32,
    has_fallback: bool,
    policy: &Policy,
    breaker_open: bool,
) -> Next {
    let Some(last) = attempts.last() else {
        return if breaker_open {
            Next::Skip
        } else {
            Next::Attempt {
                role: Role::Primary,
                backoff: None,
            }
        };
    };
    if last.status == Status::Landed {
        return Next::Ready;
    }
    let regular: Vec<&AttemptView> = attempts.iter().filter(|a| !a.infra).collect();
    let final_status = |last: &AttemptView| {
        if regular.len() > 1 {
            let fallback = regular.iter().any(|a| a.role == Role::Fallback);
            Next::Final {
                status: Status::Failed,
                message: format!(
                    "failed after {} attempts ({} retr{}{}); every attempt's patch is kept; the last: {}",
                    regular.len(),
                    regular.iter().filter(|a| a.role == Role::Primary).count() - 1,
                    if regular.iter().filter(|a| a.role == Role::Primary).count() == 2 { "y" } else { "ies" },
                    if fallback { ", then the fallback agent" } else { "" },
                    last.message
                ),
            }
        } else {
            Next::Final {
                status: last.status,
                message: last.message.clone(),
            }
        }
    };
    if last.infra {
        let in_a_row = attempts.iter().rev().take_while(|a| a.infra).count() as u32;
        if breaker_open || in_a_row > policy.infra_retries {
            return final_status(last);
        }
        return Next::Attempt {
            role: last.role,
            backoff: Some(policy.backoff.saturating_mul(1 << (in_a_row - 1).min(16))),
        };
    }
    let retry_worthy = last.retryable
        && matches!(
            last.status,
            Status::Rejected | Status::VerifyFailed | Status::AgentFailed | Status::Timeout
        );
    if !retry_worthy {
        return final_status(last);
    }
    let primary_failures = regular.iter().filter(|a| a.role == Role::Primary).count() as u32;
    match last.role {
        Role::Primary if primary_failures <= retries => Next::Attempt {
            role: Role::Primary,
            backoff: None,
        },
        Role::Primary if has_fallback => Next::Attempt {
            role: Role::Fallback,
            backoff: None,
        },
        _ => final_status(last),
    }
}

pub(super) fn view(a: &crate::state::journal::Attempt) -> AttemptView {
    AttemptView {
        role: a.role,
        status: a.result.status,
        infra: a.infra.is_some(),
        retryable: a.result.agent_failure != Some(crate::record::FailureKind::Authentication),
        message: a.result.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        infra_retries: 2,
        backoff: Duration::from_secs(10),
        breaker: 3,
    };

    fn failed(role: Role, status: Status) -> AttemptView {
        AttemptView {
            role,
            status,
            infra: false,
            retryable: true,
            message: format!("{status:?}"),
        }
    }

    fn infra(role: Role) -> AttemptView {
        AttemptView {
            infra: true,
            ..failed(role, Status::InfraError)
        }
    }

    fn attempt(role: Role) -> Next {
        Next::Attempt {
            role,
            backoff: None,
        }
    }

    #[test]
    fn a_failed_change_is_retried_then_handed_to_the_fallback_then_failed() {
        let f = |n| vec![failed(Role::Primary, Status::VerifyFailed); n];
        assert_eq!(decide(&[], 2, true, &POLICY, false), attempt(Role::Primary));
        assert_eq!(
            decide(&f(1), 2, true, &POLICY, false),
            attempt(Role::Primary)
        );
        assert_eq!(
            decide(&f(2), 2, true, &POLICY, false),
            attempt(Role::Primary)
        );
        assert_eq!(
            decide(&f(3), 2, true, &POLICY, false),
            attempt(Role::Fallback)
        );
        let mut all = f(3);
        all.push(failed(Role::Fallback, Status::Rejected));
        match decide(&all, 2, true, &POLICY, false) {
            Next::Final { status, message } => {
                assert_eq!(status, Status::Failed);
                assert!(
                    message.starts_with(
                        "failed after 4 attempts (2 retries, then the fallback agent)"
                    ),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Without a fallback the retries are the end.
        assert!(matches!(
            decide(&f(3), 2, false, &POLICY, false),
            Next::Final {
                status: Status::Failed,
                ..
            }
        ));
        // With no retries and no fallback, the attempt's own status stands.
        assert_eq!(
            decide(&f(1), 0, false, &POLICY, false),
            Next::Final {
                status: Status::VerifyFailed,
                message: "VerifyFailed".into()
            }
        );
    }

    #[test]
    fn a_passing_attempt_is_ready_and_what_cannot_improve_is_final() {
        let ok = failed(Role::Primary, Status::Landed);
        assert_eq!(decide(&[ok], 2, true, &POLICY, false), Next::Ready);
        for status in [Status::NoChange, Status::Conflict] {
            assert!(matches!(
                decide(&[failed(Role::Primary, status)], 2, true, &POLICY, false),
                Next::Final { status: s, .. } if s == status
            ));
        }
        let refused = AttemptView {
            retryable: false,
            ..failed(Role::Primary, Status::AgentFailed)
        };
        assert!(matches!(
            decide(&[refused], 2, true, &POLICY, false),
            Next::Final {
                status: Status::AgentFailed,
                ..
            }
        ));
    }

    #[test]
    fn infrastructure_failures_are_retried_with_a_growing_wait_outside_the_budget() {
        let one = [infra(Role::Primary)];
        assert_eq!(
            decide(&one, 0, false, &POLICY, false),
            Next::Attempt {
                role: Role::Primary,
                backoff: Some(Duration::from_secs(10))
            }
        );
        let two = [infra(Role::Primary), infra(Role::Primary)];
        assert_eq!(
            decide(&two, 0, false, &POLICY, false),
            Next::Attempt {
                role: Role::Primary,
                backoff: Some(Duration::from_secs(20))
            }
        );
        let three = [
            infra(Role::Primary),
            infra(Role::Primary),
            infra(Role::Primary),
        ];
        assert!(matches!(
            decide(&three, 0, false, &POLICY, false),
            Next::Final {
                status: Status::InfraError,
                ..
            }
        ));
        // An open breaker stops infrastructure retries and keeps new units from starting.
        assert!(matches!(
            decide(&one, 0, false, &POLICY, true),
            Next::Final { .. }
        ));
        assert_eq!(decide(&[], 2, false, &POLICY, true), Next::Skip);
        // Infrastructure failures do not use up the retries of a failed change.
        let mixed = [
            failed(Role::Primary, Status::VerifyFailed),
            infra(Role::Primary),
            failed(Role::Primary, Status::VerifyFailed),
        ];
        assert_eq!(
            decide(&mixed, 2, false, &POLICY, false),
            attempt(Role::Primary)
        );
    }
}
