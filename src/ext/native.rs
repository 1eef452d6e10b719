//! Native in-process extensions: plain Rust functions registered under a
//! namespace. The test suite drives the seam with them; embedders can use
//! them for built-in extensions that need no sandbox.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    BoxFuture, ExtError, Extension, Facility, HttpApplet, Registration, ServiceMode, TaskCtx,
    TcpApplet, Verdict,
};
use crate::proxy::txn::Txn;
use crate::sample::Sample;

/// A sample fetch: `(txn, args) -> sample`.
pub type FetchFn =
    Arc<dyn Fn(&mut Txn, &[Sample]) -> Result<Option<Sample>, ExtError> + Send + Sync>;
/// A converter: `(txn, input, args) -> sample`.
pub type ConvFn =
    Arc<dyn Fn(&mut Txn, Sample, &[Sample]) -> Result<Option<Sample>, ExtError> + Send + Sync>;
/// An action; it may wait.
pub type ActionFn =
    for<'a> fn(&'a mut Txn, &'a [String]) -> BoxFuture<'a, Result<Verdict, ExtError>>;
/// An HTTP service.
pub type HttpServiceFn =
    for<'a> fn(&'a mut Txn, &'a mut HttpApplet) -> BoxFuture<'a, Result<(), ExtError>>;
/// A TCP service.
pub type TcpServiceFn =
    for<'a> fn(&'a mut Txn, &'a mut TcpApplet) -> BoxFuture<'a, Result<(), ExtError>>;
/// A task.
pub type TaskFn = fn(TaskCtx) -> BoxFuture<'static, Result<(), ExtError>>;

/// An extension made of Rust functions.
#[derive(Default, Clone)]
pub struct NativeExtension {
    ns: String,
    regs: Vec<Registration>,
    fetches: HashMap<String, FetchFn>,
    convs: HashMap<String, ConvFn>,
    actions: HashMap<String, ActionFn>,
    http_services: HashMap<String, HttpServiceFn>,
    tcp_services: HashMap<String, TcpServiceFn>,
    tasks: HashMap<String, TaskFn>,
}

impl NativeExtension {
    pub fn new(namespace: &str) -> NativeExtension {
        NativeExtension {
            ns: namespace.to_string(),
            ..NativeExtension::default()
        }
    }

    pub fn fetch(
        mut self,
        name: &str,
        f: impl Fn(&mut Txn, &[Sample]) -> Result<Option<Sample>, ExtError> + Send + Sync + 'static,
    ) -> Self {
        self.regs.push(Registration::Fetch { name: name.into() });
        self.fetches.insert(name.into(), Arc::new(f));
        self
    }

    pub fn converter(
        mut self,
        name: &str,
        f: impl Fn(&mut Txn, Sample, &[Sample]) -> Result<Option<Sample>, ExtError>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.regs
            .push(Registration::Converter { name: name.into() });
        self.convs.insert(name.into(), Arc::new(f));
        self
    }

    pub fn action(mut self, name: &str, facilities: &[Facility], nargs: u32, f: ActionFn) -> Self {
        self.regs.push(Registration::Action {
            name: name.into(),
            facilities: facilities.to_vec(),
            nargs,
        });
        self.actions.insert(name.into(), f);
        self
    }

    pub fn http_service(mut self, name: &str, f: HttpServiceFn) -> Self {
        self.regs.push(Registration::Service {
            name: name.into(),
            mode: ServiceMode::Http,
        });
        self.http_services.insert(name.into(), f);
        self
    }

    pub fn tcp_service(mut self, name: &str, f: TcpServiceFn) -> Self {
        self.regs.push(Registration::Service {
            name: name.into(),
            mode: ServiceMode::Tcp,
        });
        self.tcp_services.insert(name.into(), f);
        self
    }

    pub fn task(mut self, name: &str, f: TaskFn) -> Self {
        self.regs.push(Registration::Task { name: name.into() });
        self.tasks.insert(name.into(), f);
        self
    }
}

fn unknown(kind: &'static str, name: &str) -> ExtError {
    ExtError::Unknown {
        kind,
        name: name.to_string(),
    }
}

impl Extension for NativeExtension {
    fn namespace(&self) -> &str {
        &self.ns
    }

    fn registrations(&self) -> Vec<Registration> {
        self.regs.clone()
    }

    fn fetch(
        &self,
        name: &str,
        txn: &mut Txn,
        args: &[Sample],
    ) -> Result<Option<Sample>, ExtError> {
        let f = self
            .fetches
            .get(name)
            .ok_or_else(|| unknown("fetch", name))?;
        f(txn, args)
    }

    fn convert(
        &self,
        name: &str,
        txn: &mut Txn,
        input: Sample,
        args: &[Sample],
    ) -> Result<Option<Sample>, ExtError> {
        let f = self
            .convs
            .get(name)
            .ok_or_else(|| unknown("converter", name))?;
        f(txn, input, args)
    }

    fn action<'a>(
        &'a self,
        name: &'a str,
        _facility: Facility,
        txn: &'a mut Txn,
        args: &'a [String],
    ) -> BoxFuture<'a, Result<Verdict, ExtError>> {
        match self.actions.get(name) {
            Some(f) => f(txn, args),
            None => Box::pin(async move { Err(unknown("action", name)) }),
        }
    }

    fn http_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut HttpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>> {
        match self.http_services.get(name) {
            Some(f) => f(txn, applet),
            None => Box::pin(async move { Err(unknown("service", name)) }),
        }
    }

    fn tcp_service<'a>(
        &'a self,
        name: &'a str,
        txn: &'a mut Txn,
        applet: &'a mut TcpApplet,
    ) -> BoxFuture<'a, Result<(), ExtError>> {
        match self.tcp_services.get(name) {
            Some(f) => f(txn, applet),
            None => Box::pin(async move { Err(unknown("service", name)) }),
        }
    }

    fn task<'a>(&'a self, name: &'a str, ctx: TaskCtx) -> BoxFuture<'a, Result<(), ExtError>> {
        match self.tasks.get(name) {
            Some(f) => f(ctx),
            None => Box::pin(async move { Err(unknown("task", name)) }),
        }
    }
}
