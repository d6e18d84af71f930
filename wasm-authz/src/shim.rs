//! proxy-wasm glue: reads the plugin configuration into an [`Engine`] and applies its
//! [`Decision`] to every HTTP stream. Holds no logic of its own so the rest stays testable.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::{Decision, Engine, FilterConfig, Verdict};

proxy_wasm::main! {{
    // Pass everything to the host: Envoy filters by its own `wasm` log level.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(WardRoot { engine: None }) });
}}

struct WardRoot {
    /// `None` until a configuration parsed; Envoy creates no HTTP contexts before that.
    engine: Option<Rc<Engine>>,
}

impl Context for WardRoot {}

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
                self.engine = Some(Rc::new(Engine::new(config)));
                true
            }
            Err(e) => {
                // false makes Envoy fail the plugin; with fail_open false requests are denied.
                log::error!("ward: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let engine = self.engine.clone()?;
        Some(Box::new(WardHttp {
            context_id,
            engine,
            decision: None,
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
}

impl Context for WardHttp {}

impl HttpContext for WardHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let decision = self.engine.decide();
        log::debug!(
            "ward: stream {} for {}: {:?}",
            self.context_id,
            self.engine.config().workload,
            decision.verdict
        );
        let action = match decision.verdict {
            Verdict::Allow => Action::Continue,
        };
        self.decision = Some(decision);
        action
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Local replies that never passed our request callback still get the marker.
        let decision = self.decision.take().unwrap_or_else(|| self.engine.decide());
        for (name, value) in &decision.response_headers {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
