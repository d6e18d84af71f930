//! A stand-in module that panics on demand, for the end-to-end test of what Ward's sidecars
//! do when the filter's VM fails at run time (requests refused, `wardctl status` says so).
//! Never loaded outside that test: Ward's own module has no such switch.
//!
//! Build: `cargo build -p wasm-authz --target wasm32-wasip1 --release --example fault_module`.
//! A request with `x-ward-fault: panic` makes the VM panic; others pass, marked
//! `x-ward-wasm: fault-module`.

#[cfg(target_arch = "wasm32")]
mod fault {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FaultRoot) });
    }}

    struct FaultRoot;

    impl Context for FaultRoot {}

    impl RootContext for FaultRoot {
        fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(FaultHttp))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    struct FaultHttp;

    impl Context for FaultHttp {}

    impl HttpContext for FaultHttp {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if self.get_http_request_header("x-ward-fault").as_deref() == Some("panic") {
                panic!("x-ward-fault: panic");
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            self.add_http_response_header("x-ward-wasm", "fault-module");
            Action::Continue
        }
    }
}
