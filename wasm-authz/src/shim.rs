//! proxy-wasm glue: reads the plugin configuration into an [`Engine`] and applies its
//! [`Decision`] to every HTTP stream; on the outbound side, keeps the retry budgets in shared
//! data. Holds no logic of its own so the rest stays testable.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

use crate::retry_budget::{BudgetState, Grant, RetryBudgetConfig};
use crate::{
    Decision, Engine, FilterConfig, HttpInput, KeyRefresh, Verdict, KEY_REFRESH_METHOD,
    KEY_REFRESH_SERVICE,
};

proxy_wasm::main! {{
    // Pass everything to the host: Envoy filters by its own `wasm` log level.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WardRoot { engine: None }) });
}}

struct WardRoot {
    /// `None` until a configuration parsed; Envoy creates no HTTP contexts before that.
    engine: Option<Rc<Engine>>,
}

impl Context for WardRoot {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, _response_size: usize) {
        if status_code != 0 {
            log::warn!(
                "ward: the control plane refused to fetch keys again (gRPC status {status_code})"
            );
        }
    }
}

impl RootContext for WardRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FilterConfig::from_json(&bytes) {
            Ok(config) => {
                log::info!(
                    "ward: configured for {}.{} ({}), config version {}",
                    config.workload,
                    config.namespace,
                    config.identity,
                    config.version
                );
                let refreshes_keys = config
                    .authorization
                    .as_ref()
                    .is_some_and(|a| a.key_refresh_cluster.is_some());
                self.engine = Some(Rc::new(Engine::new(config)));
                if refreshes_keys {
                    self.set_tick_period(KEY_REFRESH_TICK);
                }
                true
            }
            Err(e) => {
                // false makes Envoy fail the plugin; with fail_open false requests are denied.
                log::error!("ward: {e}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let pending = PENDING_REFRESHES.with(|pending| std::mem::take(&mut *pending.borrow_mut()));
        for refresh in pending {
            let message = refresh.encode_request();
            match self.dispatch_grpc_call(
                &refresh.cluster,
                KEY_REFRESH_SERVICE,
                KEY_REFRESH_METHOD,
                Vec::new(),
                Some(&message),
                std::time::Duration::from_secs(5),
            ) {
                Ok(_) => log::info!(
                    "ward: no key `{}` for issuer {}: asked the control plane to fetch its keys again",
                    refresh.kid,
                    refresh.issuer
                ),
                Err(e) => log::warn!("ward: cannot ask the control plane for fresh keys: {e:?}"),
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let engine = self.engine.clone()?;
        if engine.config().outbound.is_some() {
            return Some(Box::new(RetryBudgetHttp {
                engine,
                retry: None,
            }));
        }
        Some(Box::new(WardHttp {
            context_id,
            engine,
            decision: None,
            replied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct WardHttp {
    context_id: u32,
    engine: Rc<Engine>,
    /// Decided on the request, applied to the response.
    decision: Option<Decision>,
    /// This filter answered the request itself (401/403), headers included.
    replied: bool,
}

impl Context for WardHttp {}

impl WardHttp {
    /// A string attribute of the stream (Envoy's attribute paths).
    fn string_property(&self, path: &[&str]) -> Option<String> {
        self.get_property(path.to_vec())
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| !s.is_empty())
    }

    /// `ip:port` → ip.
    fn address_ip(&self, path: &[&str]) -> Option<std::net::IpAddr> {
        let text = self.string_property(path)?;
        text.parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .ok()
            .or_else(|| text.parse().ok())
    }

    fn input(&self) -> HttpInput {
        let port = self
            .get_property(vec!["destination", "port"])
            .filter(|b| b.len() == 8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()) as u16)
            .unwrap_or_default();
        let now = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        HttpInput {
            headers: self.get_http_request_headers(),
            source_principal: self.string_property(&["connection", "uri_san_peer_certificate"]),
            source_ip: self.address_ip(&["source", "address"]),
            destination_ip: self.address_ip(&["destination", "address"]),
            destination_port: port,
            sni: self.string_property(&["connection", "requested_server_name"]),
            now,
        }
    }
}

/// At most one request for fresh keys per issuer and `kid` per this long, across the
/// proxy's workers (a client retrying with a token nobody can verify would ask on every
/// request otherwise). The control plane limits its fetches on its own as well.
const KEY_REFRESH_INTERVAL_MS: u64 = 10_000;

thread_local! {
    /// Key refreshes HTTP contexts decided on, for the root context to send: a call made by
    /// an HTTP context is cancelled when its stream ends, which a 401 does at once.
    static PENDING_REFRESHES: std::cell::RefCell<Vec<KeyRefresh>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How often the root context sends pending key refreshes.
const KEY_REFRESH_TICK: std::time::Duration = std::time::Duration::from_millis(200);

impl WardHttp {
    /// Queues a request to the control plane to fetch the issuer's JWKS again, unless this
    /// proxy asked for that key recently. Fire and forget: the new keys arrive with the next
    /// configuration.
    fn request_key_refresh(&self, refresh: &KeyRefresh) {
        let now_ms = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let key = format!("ward.key_refresh.{}/{}", refresh.issuer, refresh.kid);
        let (last, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        let last = last
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or_default();
        if now_ms.saturating_sub(last) < KEY_REFRESH_INTERVAL_MS {
            return;
        }
        // Another worker winning the swap asks instead.
        if hostcalls::set_shared_data(&key, Some(&now_ms.to_le_bytes()), cas).is_err() {
            return;
        }
        PENDING_REFRESHES.with(|pending| pending.borrow_mut().push(refresh.clone()));
    }
}

impl HttpContext for WardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let decision = self.engine.decide(&self.input());
        log::debug!(
            "ward: stream {} for {}: {:?}",
            self.context_id,
            self.engine.config().workload,
            decision.verdict
        );
        if let Verdict::Deny {
            status,
            body,
            reason,
        } = &decision.verdict
        {
            log::info!("ward: denied with {status}: {reason}");
            if let Some(refresh) = &decision.refresh_keys {
                self.request_key_refresh(refresh);
            }
            let headers: Vec<(&str, &str)> = decision
                .response_headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .chain([
                    ("content-type", "text/plain"),
                    ("x-ward-decision", reason.as_str()),
                ])
                .collect();
            self.send_http_response(*status, headers, Some(body.as_bytes()));
            self.replied = true;
            return Action::Pause;
        }
        for header in &decision.strip_request_headers {
            self.set_http_request_header(header, None);
        }
        for (name, value) in &decision.set_request_headers {
            self.set_http_request_header(name, Some(value));
        }
        self.decision = Some(decision);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Continue;
        }
        // Local replies that never passed our request callback still get the marker.
        let headers = match self.decision.take() {
            Some(decision) => decision.response_headers,
            None => vec![self.engine.marker()],
        };
        for (name, value) in &headers {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}

/// The outbound side: grants each request on a retryable route its retries from the
/// destination's budget (`x-envoy-max-retries`, read by the router), and charges the retries
/// it made when the response comes back (`x-envoy-attempt-count`).
struct RetryBudgetHttp {
    engine: Rc<Engine>,
    /// (budget key, its config, the grant) for a retryable request.
    retry: Option<(String, RetryBudgetConfig, Grant)>,
}

impl Context for RetryBudgetHttp {}

/// Shared-data key of a destination's budget: one balance for every worker thread.
fn budget_key(destination: &str) -> String {
    format!("ward.retry_budget/{destination}")
}

/// Applies `update` to the shared budget of `destination` (compare-and-swap, retried when
/// another worker wrote in between), then publishes its gauges if `publish`.
fn update_budget<T>(
    destination: &str,
    config: &RetryBudgetConfig,
    now_ms: u64,
    publish: bool,
    update: impl Fn(&mut BudgetState) -> T,
) -> T {
    let key = budget_key(destination);
    loop {
        let (bytes, cas) = hostcalls::get_shared_data(&key).unwrap_or((None, None));
        let mut state = bytes
            .as_deref()
            .and_then(BudgetState::from_bytes)
            .unwrap_or_default();
        let result = update(&mut state);
        match hostcalls::set_shared_data(&key, Some(&state.to_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            Err(e) => log::warn!("ward: cannot store the retry budget of {destination}: {e:?}"),
            Ok(()) => {}
        }
        if publish {
            publish_gauges(destination, &mut state, config, now_ms);
        }
        return result;
    }
}

thread_local! {
    /// Gauge ids by destination: defining a metric is a host call and a string to build, so
    /// once per destination and worker, not per request.
    static GAUGES: std::cell::RefCell<std::collections::HashMap<String, Option<[u32; 4]>>> =
        Default::default();
}

/// `wasmcustom.ward.retry_budget.<destination>.{requests,retries,refused,available}` in
/// Envoy's stats.
fn publish_gauges(
    destination: &str,
    state: &mut BudgetState,
    config: &RetryBudgetConfig,
    now_ms: u64,
) {
    const NAMES: [&str; 4] = ["requests", "retries", "refused", "available"];
    let ids = GAUGES.with(|gauges| {
        *gauges
            .borrow_mut()
            .entry(destination.to_string())
            .or_insert_with(|| {
                let mut ids = [0u32; 4];
                for (id, name) in ids.iter_mut().zip(NAMES) {
                    let metric = format!("ward.retry_budget.{destination}.{name}");
                    *id = hostcalls::define_metric(MetricType::Gauge, &metric).ok()?;
                }
                Some(ids)
            })
    });
    let Some(ids) = ids else {
        return;
    };
    let available = state.available_retries(config, now_ms);
    for (id, value) in
        ids.into_iter()
            .zip([state.requests, state.retries, state.refused, available])
    {
        let _ = hostcalls::record_metric(id, value);
    }
}

impl RetryBudgetHttp {
    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default()
    }

    fn property(&self, path: &[&str]) -> String {
        self.get_property(path.to_vec())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl HttpContext for RetryBudgetHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(outbound) = &self.engine.config().outbound else {
            return Action::Continue;
        };
        let cluster = self.property(&["xds", "cluster_name"]);
        let route = self.property(&["xds", "route_name"]);
        let Some((destination, budget, route_max)) = outbound.retryable(&cluster, &route) else {
            return Action::Continue;
        };
        let now = self.now_ms();
        // Gauges once per request, when it is charged.
        let grant = update_budget(destination, budget, now, false, |state| {
            state.grant(budget, now, route_max)
        });
        self.set_http_request_header("x-envoy-max-retries", Some(&grant.retries.to_string()));
        self.retry = Some((destination.to_string(), *budget, grant));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some((destination, budget, grant)) = self.retry.take() else {
            return Action::Continue;
        };
        let attempts = self
            .get_http_response_header("x-envoy-attempt-count")
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(1);
        // Envoy's, for the budget only: the client sees the response as the app sent it.
        self.set_http_response_header("x-envoy-attempt-count", None);
        let failed = self
            .get_http_response_header(":status")
            .and_then(|v| v.parse::<u32>().ok())
            .is_none_or(|status| status >= 500);
        let now = self.now_ms();
        update_budget(&destination, &budget, now, true, |state| {
            state.charge(&budget, now, &grant, attempts, failed)
        });
        Action::Continue
    }
}
