//! Linkerd's retry budget (the `tower` TPS budget behind `ServiceProfile.retryBudget`),
//! kept by the client's sidecar for each destination service.
//!
//! Every original request deposits one unit; every retry withdraws `1 / retryRatio` units; a
//! reserve worth `minRetriesPerSecond × ttl` retries is always there; deposits and withdrawals
//! expire after `ttl` (a ring of [`SLOTS`] slots, the oldest dropped as time moves on). So over
//! any `ttl` window, retries ≤ `retryRatio × requests + minRetriesPerSecond × ttl`.
//!
//! One difference from Linkerd, who asks the budget before each retry: Envoy's router makes
//! the retries, so the filter grants a request its retries when the request starts
//! ([`BudgetState::grant`], sent as `x-envoy-max-retries`) and charges what was used when the
//! response comes back ([`BudgetState::charge`]). So that many requests in flight cannot
//! together spend more than the budget holds, a grant withdraws at once what the request is
//! expected to spend: with `n` retries and a recent failure rate `p` per attempt,
//! `p + p² + … + pⁿ`; the charge settles the difference, withdrawing each retry at about the
//! time it happened. Should requests still spend more, the balance dips below zero; the debt
//! expires like any withdrawal.
//!
//! The state is plain bytes ([`BudgetState::to_bytes`]) so the shim can keep it in proxy-wasm
//! shared data, one balance for all of the proxy's worker threads.

use serde::{Deserialize, Serialize};

/// Slots in the ring: the budget forgets in steps of `ttl / SLOTS`.
pub const SLOTS: usize = 10;
/// Units one original request deposits (integer arithmetic: a retry withdraws
/// `DEPOSIT / retryRatio`, rounded up).
pub const DEPOSIT: i64 = 1000;

/// `ServiceProfile.spec.retryBudget`, as the control plane sends it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetConfig {
    /// Retries may add at most this fraction of the original requests (Linkerd default 0.2).
    pub retry_ratio: f64,
    /// Retries always allowed per second on top (Linkerd default 10).
    pub min_retries_per_second: u32,
    /// How long deposits and withdrawals count (Linkerd default 10 s).
    pub ttl_ms: u64,
}

impl Default for RetryBudgetConfig {
    /// Linkerd's defaults when a ServiceProfile has no `retryBudget`.
    fn default() -> Self {
        RetryBudgetConfig {
            retry_ratio: 0.2,
            min_retries_per_second: 10,
            ttl_ms: 10_000,
        }
    }
}

impl RetryBudgetConfig {
    /// Units one retry costs.
    pub fn withdrawal(&self) -> i64 {
        if self.retry_ratio <= 0.0 {
            // No ratio: only the reserve pays for retries.
            return i64::MAX / 4;
        }
        (DEPOSIT as f64 / self.retry_ratio).ceil() as i64
    }

    /// Units always available: `minRetriesPerSecond × ttl` retries' worth.
    pub fn reserve(&self) -> i64 {
        let retries = self.min_retries_per_second as i64 * self.ttl_ms as i64 / 1000;
        retries.saturating_mul(self.withdrawal().min(i64::MAX / 4 / retries.max(1)))
    }

    fn slot_ms(&self) -> u64 {
        (self.ttl_ms / SLOTS as u64).max(1)
    }
}

/// What [`BudgetState::grant`] gave a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Retries the request may make (`x-envoy-max-retries`).
    pub retries: u32,
    /// Its route's own cap.
    pub route_max: u32,
    /// Units withdrawn up front.
    pub reserved: i64,
    /// Start of the slot the reservation went into.
    pub slot_start_ms: u64,
    /// When the request started.
    pub started_ms: u64,
}

/// One destination's budget: the ring of slots and counters for metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BudgetState {
    /// When the current slot started, in ms since the Unix epoch.
    slot_start_ms: u64,
    current: usize,
    slots: [i64; SLOTS],
    /// Original requests deposited.
    pub requests: u64,
    /// Retries made (charged).
    pub retries: u64,
    /// Failed requests that got no retry, or fewer than their route allows, because the budget
    /// was empty.
    pub refused: u64,
    /// Decaying sums of attempts and failed attempts of finished requests: their ratio is the
    /// failure rate a grant expects.
    attempts_recently: f64,
    failures_recently: f64,
    /// Decaying sum of finished requests' durations, in ms (over `attempts_recently`: how
    /// long an attempt takes).
    duration_ms_recently: f64,
}

const ENCODED_LEN: usize = 8 + 8 + SLOTS * 8 + 3 * 8 + 3 * 8;
/// Weight of the past in the failure rate, per finished request.
const DECAY: f64 = 0.99;
/// The failure rate a grant expects is at least this: it is learnt from finished requests,
/// and the requests that fail most finish last, so it runs low while load builds up or the
/// error rate climbs (`wardctl bench retry-budget` measured the overshoot without a floor,
/// and the shortfall with full reservations; docs/benchmarks.md).
const MIN_FAILURE_RATE: f64 = 0.25;

impl BudgetState {
    /// Moves the ring forward to `now_ms`, dropping what is older than `ttl`.
    fn expire(&mut self, config: &RetryBudgetConfig, now_ms: u64) {
        let slot_ms = config.slot_ms();
        if self.slot_start_ms == 0 || now_ms >= self.slot_start_ms + slot_ms * SLOTS as u64 {
            self.slots = [0; SLOTS];
            self.slot_start_ms = now_ms;
            return;
        }
        while now_ms >= self.slot_start_ms + slot_ms {
            self.current = (self.current + 1) % SLOTS;
            self.slots[self.current] = 0;
            self.slot_start_ms += slot_ms;
        }
    }

    /// Retries a request granted `retries` is expected to make: each attempt fails with the
    /// recent failure rate (1 until there is a history).
    fn expected_retries(&self, retries: u32) -> f64 {
        let rate = if self.attempts_recently >= 1.0 {
            (self.failures_recently / self.attempts_recently).clamp(MIN_FAILURE_RATE, 1.0)
        } else {
            1.0
        };
        (1..=retries).map(|k| rate.powi(k as i32)).sum()
    }

    /// Units still there when a retry of a request starting now would happen, about one
    /// attempt from now: what has expired by then cannot pay for it (Linkerd, asking at the
    /// time of the retry, would not count it either).
    fn balance_for_retries(&mut self, config: &RetryBudgetConfig, now_ms: u64) -> i64 {
        self.expire(config, now_ms);
        let attempt_ms = if self.attempts_recently >= 1.0 {
            self.duration_ms_recently / self.attempts_recently
        } else {
            0.0
        };
        let gone = ((attempt_ms as u64 + now_ms - self.slot_start_ms) / config.slot_ms())
            .min(SLOTS as u64) as usize;
        // Deposits about to expire do not count; debts about to expire still do, as the
        // reservations in them stand for retries still to come.
        let counted: i64 = (0..SLOTS)
            .map(|age| {
                let slot = self.slots[(self.current + SLOTS - age) % SLOTS];
                if age < SLOTS - gone {
                    slot
                } else {
                    slot.min(0)
                }
            })
            .sum();
        config.reserve() + counted
    }

    /// Units available now (may be negative after an overshoot).
    pub fn balance(&mut self, config: &RetryBudgetConfig, now_ms: u64) -> i64 {
        self.expire(config, now_ms);
        config.reserve() + self.slots.iter().sum::<i64>()
    }

    /// Retries available now, whole ones.
    pub fn available_retries(&mut self, config: &RetryBudgetConfig, now_ms: u64) -> u64 {
        let balance = self.balance(config, now_ms);
        if balance <= 0 {
            0
        } else {
            (balance / config.withdrawal()) as u64
        }
    }

    /// An original request starts: deposits, and grants it retries (at most `route_max`),
    /// withdrawing at once what it is expected to spend. Hand the grant back to
    /// [`Self::charge`].
    pub fn grant(&mut self, config: &RetryBudgetConfig, now_ms: u64, route_max: u32) -> Grant {
        self.expire(config, now_ms);
        self.slots[self.current] += DEPOSIT;
        self.requests += 1;
        let balance = self.balance_for_retries(config, now_ms);
        let retries = if balance <= 0 {
            0
        } else {
            (balance / config.withdrawal()).min(route_max as i64) as u32
        };
        let reserved = (self.expected_retries(retries) * config.withdrawal() as f64).round() as i64;
        self.slots[self.current] -= reserved;
        Grant {
            retries,
            route_max,
            reserved,
            slot_start_ms: self.slot_start_ms,
            started_ms: now_ms,
        }
    }

    /// A request finished after `attempts` tries; `failed` when its final answer is one a
    /// retry is for. Settles what its grant reserved against what it spent.
    pub fn charge(
        &mut self,
        config: &RetryBudgetConfig,
        now_ms: u64,
        grant: &Grant,
        attempts: u32,
        failed: bool,
    ) {
        self.expire(config, now_ms);
        let retries = attempts.saturating_sub(1);
        // The reservation held the place of the request's retries while it was in flight:
        // take it back from its slot (unless it has expired with it). Then withdraw each
        // retry where it happened, as Linkerd does: attempts run one after the other, so retry
        // k of n began about k/(n+1) of the way from the request's start to now. A retry from
        // longer ago than ttl is forgotten, as Linkerd would have forgotten it by now.
        let slot_ms = config.slot_ms();
        let slots_ago = |start_ms: u64| {
            self.slot_start_ms
                .saturating_sub(start_ms.min(self.slot_start_ms))
                .div_ceil(slot_ms)
        };
        let grant_slots_ago =
            (self.slot_start_ms.saturating_sub(grant.slot_start_ms) / slot_ms) as usize;
        if grant_slots_ago < SLOTS {
            let slot = (self.current + SLOTS - grant_slots_ago) % SLOTS;
            self.slots[slot] += grant.reserved;
        }
        let started_ms = grant.started_ms.min(now_ms);
        for k in 1..=retries as u64 {
            let at = started_ms + (now_ms - started_ms) * k / (retries as u64 + 1);
            let ago = slots_ago(at) as usize;
            if ago < SLOTS {
                let slot = (self.current + SLOTS - ago) % SLOTS;
                self.slots[slot] -= config.withdrawal();
            }
        }
        if attempts > 0 {
            let failures = attempts - u32::from(!failed);
            self.attempts_recently = self.attempts_recently * DECAY + attempts as f64;
            self.failures_recently = self.failures_recently * DECAY + failures as f64;
            let duration = now_ms.saturating_sub(grant.started_ms) as f64;
            self.duration_ms_recently = self.duration_ms_recently * DECAY + duration;
        }
        self.retries += retries as u64;
        if failed && retries >= grant.retries && grant.retries < grant.route_max {
            self.refused += 1;
        }
    }

    /// Linkerd's way, for comparison: one retry, now, if the balance covers it.
    pub fn try_withdraw(&mut self, config: &RetryBudgetConfig, now_ms: u64) -> bool {
        if self.balance(config, now_ms) < config.withdrawal() {
            return false;
        }
        self.slots[self.current] -= config.withdrawal();
        self.retries += 1;
        true
    }

    /// Linkerd's deposit, for comparison.
    pub fn deposit(&mut self, config: &RetryBudgetConfig, now_ms: u64) {
        self.expire(config, now_ms);
        self.slots[self.current] += DEPOSIT;
        self.requests += 1;
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&self.slot_start_ms.to_le_bytes());
        out.extend_from_slice(&(self.current as u64).to_le_bytes());
        for slot in &self.slots {
            out.extend_from_slice(&slot.to_le_bytes());
        }
        for counter in [self.requests, self.retries, self.refused] {
            out.extend_from_slice(&counter.to_le_bytes());
        }
        for sum in [
            self.attempts_recently,
            self.failures_recently,
            self.duration_ms_recently,
        ] {
            out.extend_from_slice(&sum.to_bits().to_le_bytes());
        }
        out
    }

    /// None if `bytes` is not a state [`Self::to_bytes`] wrote (then start afresh).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != ENCODED_LEN {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        let current = word(1) as usize;
        if current >= SLOTS {
            return None;
        }
        let mut slots = [0i64; SLOTS];
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = word(2 + i) as i64;
        }
        let counters = 2 + SLOTS;
        Some(BudgetState {
            slot_start_ms: word(0),
            current,
            slots,
            requests: word(counters),
            retries: word(counters + 1),
            refused: word(counters + 2),
            attempts_recently: f64::from_bits(word(counters + 3)),
            failures_recently: f64::from_bits(word(counters + 4)),
            duration_ms_recently: f64::from_bits(word(counters + 5)),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub mod simulation;

#[cfg(test)]
mod tests {
    use super::*;

    /// A grant that reserved nothing, for a request that started at `T`.
    fn unreserved(retries: u32, route_max: u32) -> Grant {
        Grant {
            retries,
            route_max,
            reserved: 0,
            slot_start_ms: 0,
            started_ms: T,
        }
    }

    const T: u64 = 1_000_000;

    const LAB: RetryBudgetConfig = RetryBudgetConfig {
        retry_ratio: 0.2,
        min_retries_per_second: 10,
        ttl_ms: 10_000,
    };

    #[test]
    fn the_reserve_alone_allows_min_retries_per_second_times_ttl() {
        let mut state = BudgetState::default();
        let t = T;
        // The first request deposits 1 (a fifth of a retry): the reserve's 100 retries remain.
        let grant = state.grant(&LAB, t, u32::MAX);
        assert_eq!(grant.retries, 100);
        // With no history, the grant reserves every retry it gives.
        assert_eq!(state.available_retries(&LAB, t), 0);
        state.charge(&LAB, t, &grant, 101, true);
        assert_eq!(state.available_retries(&LAB, t), 0);
        assert_eq!(state.retries, 100);
    }

    #[test]
    fn every_five_requests_pay_for_one_retry_at_ratio_point_two() {
        let mut state = BudgetState::default();
        let t = T;
        state.grant(&LAB, t, 0);
        // Spend the reserve and the first deposit's fraction.
        state.charge(&LAB, t, &unreserved(100, 100), 101, false);
        let before = state.available_retries(&LAB, t);
        for _ in 0..4 {
            state.grant(&LAB, t, 0);
        }
        assert_eq!(state.available_retries(&LAB, t), before + 1);
    }

    #[test]
    fn spending_expires_after_ttl() {
        let mut state = BudgetState::default();
        let t = T;
        state.grant(&LAB, t, 0);
        state.charge(&LAB, t, &unreserved(100, 100), 101, false);
        assert_eq!(state.available_retries(&LAB, t + 9_000), 0);
        // The whole ring has turned: debt and deposits are gone, the reserve is back.
        assert_eq!(state.available_retries(&LAB, t + 10_000), 100);
    }

    #[test]
    fn grants_are_capped_by_the_route() {
        let mut state = BudgetState::default();
        assert_eq!(state.grant(&LAB, 5_000, 3).retries, 3);
    }

    #[test]
    fn an_overshoot_is_debt_that_blocks_retries_until_it_expires() {
        let mut state = BudgetState::default();
        let t = T;
        state.grant(&LAB, t, 0);
        state.charge(&LAB, t, &unreserved(150, 150), 151, false);
        assert!(state.balance(&LAB, t) < 0);
        assert_eq!(state.grant(&LAB, t + 1, 5).retries, 0);
    }

    #[test]
    fn refusals_count_failed_requests_the_budget_stopped() {
        let mut state = BudgetState::default();
        let t = T;
        state.charge(&LAB, t, &unreserved(0, 5), 1, true);
        state.charge(&LAB, t, &unreserved(2, 5), 3, true);
        // Used every retry its route allows: the route stopped it, not the budget.
        state.charge(&LAB, t, &unreserved(5, 5), 6, true);
        // Succeeded: nothing refused.
        state.charge(&LAB, t, &unreserved(0, 5), 1, false);
        assert_eq!(state.refused, 2);
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let mut state = BudgetState::default();
        let grant = state.grant(&LAB, 1_234_567, 3);
        state.charge(&LAB, 1_235_567, &grant, 2, false);
        let bytes = state.to_bytes();
        assert_eq!(BudgetState::from_bytes(&bytes), Some(state));
        assert_eq!(BudgetState::from_bytes(&bytes[1..]), None);
    }

    /// Many requests in flight (the lab's 0.2–3 s answers at 100/s) do not spend more than
    /// the budget holds: the grants count what was promised to requests in flight.
    #[test]
    fn concurrent_requests_stay_within_the_budget() {
        use simulation::{simulate, Load, Policy};
        for error_rate in [0.4, 0.9, 1.0] {
            let load = Load {
                requests_per_second: 100.0,
                error_rate,
                latency_ms: (200, 3000),
                seconds: 60,
                route_max: 5,
                seed: 7,
            };
            let ward = simulate(&LAB, &load, Policy::Ward);
            let linkerd = simulate(&LAB, &load, Policy::Linkerd);
            // Within 10 % of the bound: grants are made on the balance at a request's start,
            // not at each retry's (docs/benchmarks.md has the whole grid).
            assert!(
                ward.retries as f64 <= ward.bound * 1.1,
                "error rate {error_rate}: {ward:?}"
            );
            // Close to what Linkerd itself allows.
            assert!(
                ward.retries as f64 >= linkerd.retries as f64 * 0.75,
                "error rate {error_rate}: ward {ward:?} linkerd {linkerd:?}"
            );
        }
    }

    /// Long-run retries stay within Linkerd's formula under steady load at any error rate.
    #[test]
    fn long_run_retries_follow_the_formula() {
        for error_rate in [0.1, 0.5, 0.9, 1.0] {
            let mut state = BudgetState::default();
            let rps = 100u64;
            let seconds = 60u64;
            let mut rng = 0x9e3779b97f4a7c15u64;
            let mut fail = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % 10_000) as f64 / 10_000.0 < error_rate
            };
            for i in 0..rps * seconds {
                let now = 1_000_000 + i * 1000 / rps;
                let grant = state.grant(&LAB, now, 5);
                let mut attempts = 1;
                let mut failed = fail();
                while failed && attempts <= grant.retries {
                    attempts += 1;
                    failed = fail();
                }
                state.charge(&LAB, now, &grant, attempts, failed);
            }
            let bound = 0.2 * (rps * seconds) as f64 + 10.0 * seconds as f64;
            assert!(
                state.retries as f64 <= bound * 1.01,
                "error rate {error_rate}: {} retries > {bound}",
                state.retries
            );
        }
    }
}
