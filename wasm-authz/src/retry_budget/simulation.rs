//! A discrete-event model of a client under steady load against a flaky service, to compare
//! the filter's grant-and-charge budget with Linkerd's check-before-each-retry budget and
//! with the formula's bound (`wardctl bench retry-budget`, and the unit tests).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{BudgetState, Grant, RetryBudgetConfig};

#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub requests_per_second: f64,
    /// Probability that one attempt fails.
    pub error_rate: f64,
    /// Each attempt takes a uniform time in this range, in ms.
    pub latency_ms: (u64, u64),
    pub seconds: u64,
    /// Retries a request may make at most (the route's cap).
    pub route_max: u32,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub requests: u64,
    pub retries: u64,
    /// Requests whose last attempt succeeded.
    pub successes: u64,
    /// `retryRatio × requests + minRetriesPerSecond × seconds`.
    pub bound: f64,
    /// The most retries in any `ttl` window, and that window's bound
    /// (`reserve + retryRatio × requests in the window`).
    pub worst_window_retries: u64,
    pub worst_window_bound: f64,
}

/// Which budget decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The filter: retries granted at the start, charged at the end.
    Ward,
    /// Linkerd: each retry asks the budget when it is about to happen.
    Linkerd,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs `load` against `config` under `policy`.
pub fn simulate(config: &RetryBudgetConfig, load: &Load, policy: Policy) -> Outcome {
    let mut rng = Rng(load.seed.max(1));
    let mut state = BudgetState::default();
    let start_ms = 1_000_000u64;
    let end_ms = start_ms + load.seconds * 1000;
    let interval_ms = 1000.0 / load.requests_per_second;
    // (when, request id, event): attempts in flight finish in time order.
    let mut events: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    // Per request: (grant, attempts so far).
    let mut requests: Vec<(Grant, u32)> = Vec::new();
    let mut retry_times: Vec<u64> = Vec::new();
    let mut arrival_times: Vec<u64> = Vec::new();
    let mut successes = 0u64;
    let mut next_arrival = start_ms as f64;
    let latency = |rng: &mut Rng| {
        let (low, high) = load.latency_ms;
        low + ((high - low) as f64 * rng.next()) as u64
    };
    loop {
        let arrival_due = next_arrival < end_ms as f64;
        let next_event = events.peek().map(|Reverse((t, _))| *t);
        let take_arrival = match next_event {
            Some(t) => arrival_due && (next_arrival as u64) <= t,
            None => arrival_due,
        };
        if take_arrival {
            let now = next_arrival as u64;
            next_arrival += interval_ms;
            let id = requests.len() as u64;
            let grant = match policy {
                Policy::Ward => state.grant(config, now, load.route_max),
                Policy::Linkerd => {
                    state.deposit(config, now);
                    Grant {
                        retries: load.route_max,
                        route_max: load.route_max,
                        reserved: 0,
                        slot_start_ms: 0,
                        started_ms: now,
                    }
                }
            };
            requests.push((grant, 1));
            arrival_times.push(now);
            events.push(Reverse((now + latency(&mut rng), id)));
            continue;
        }
        let Some(Reverse((now, id))) = events.pop() else {
            break;
        };
        let (grant, attempts) = requests[id as usize];
        let failed = rng.next() < load.error_rate;
        let may_retry = failed
            && attempts <= grant.retries
            && match policy {
                Policy::Ward => true,
                Policy::Linkerd => state.try_withdraw(config, now),
            };
        if may_retry {
            requests[id as usize].1 += 1;
            retry_times.push(now);
            events.push(Reverse((now + latency(&mut rng), id)));
            continue;
        }
        if !failed {
            successes += 1;
        }
        if policy == Policy::Ward {
            state.charge(config, now, &grant, attempts, failed);
        }
    }
    let requests_total = requests.len() as u64;
    // Worst ttl window, sliding by 100 ms.
    let reserve = config.min_retries_per_second as f64 * config.ttl_ms as f64 / 1000.0;
    let (mut worst, mut worst_bound) = (0u64, reserve);
    let mut window_start = start_ms;
    while window_start + config.ttl_ms <= end_ms + config.ttl_ms {
        let window = window_start..window_start + config.ttl_ms;
        let retries = retry_times.iter().filter(|t| window.contains(t)).count() as u64;
        let arrivals = arrival_times.iter().filter(|t| window.contains(t)).count() as f64;
        if retries > worst {
            worst = retries;
            worst_bound = reserve + config.retry_ratio * arrivals;
        }
        window_start += 100;
    }
    Outcome {
        requests: requests_total,
        retries: retry_times.len() as u64,
        successes,
        bound: config.retry_ratio * requests_total as f64
            + config.min_retries_per_second as f64 * load.seconds as f64,
        worst_window_retries: worst,
        worst_window_bound: worst_bound,
    }
}
