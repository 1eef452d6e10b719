//! Per-call costs of Wasm extensions, measured through the extension seam
//! the proxy uses: a no-op fetch, converter and action from a Rust guest
//! (and the same from a native extension, the baseline), a fresh
//! per-request instance, and a call that exhausts its fuel.
//!
//! Needs the guests: `bash scripts/build-guests.sh`, then `cargo bench`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use moonbox::config::model::{ExtLoad, Isolation};
use moonbox::ext::native::NativeExtension;
use moonbox::ext::{Extension, Facility, Registry, Verdict};
use moonbox::proxy::txn::{Session, Txn};
use moonbox::sample::Sample;
use moonbox::wasm::{Settings, WasmExtension};

fn testkit() -> PathBuf {
    guest("testkit")
}

fn guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("MOONBOX_GUESTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/wasm32-wasip2/release"),
        PathBuf::from,
    );
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-guests.sh",
        p.display()
    );
    p
}

fn wasm(isolation: Isolation, fuel: Option<u64>) -> Arc<dyn Extension> {
    wasm_of(testkit(), isolation, fuel)
}

fn wasm_of(file: PathBuf, isolation: Isolation, fuel: Option<u64>) -> Arc<dyn Extension> {
    let mut l = ExtLoad::for_file(file);
    l.isolation = isolation;
    l.fuel = fuel;
    let settings = Settings::from_load(&l, 1).expect("settings");
    Arc::new(WasmExtension::load(&l.file, settings).expect("testkit loads"))
}

/// The Lua guest running benches/data/bench.lua (`lua.*`).
fn lua() -> Arc<dyn Extension> {
    let mut g = moonbox::config::model::Global::default();
    g.lua_loads.push(moonbox::config::model::LuaLoad {
        file: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data/bench.lua"),
        args: Vec::new(),
        per_thread: false,
        loc: moonbox::config::model::Loc {
            file: Arc::from("bench"),
            line: 1,
        },
    });
    let settings = moonbox::wasm::lua::settings(&g, 1, None)
        .expect("Lua settings")
        .expect("a Lua extension");
    Arc::new(moonbox::wasm::lua::load(settings).expect("the Lua guest loads"))
}

fn native() -> Arc<dyn Extension> {
    Arc::new(
        NativeExtension::new("native")
            .fetch("noop", |_, _| Ok(Some(Sample::Bool(true))))
            .converter("noop", |_, input, _| Ok(Some(input))),
    )
}

/// A transaction with a request, in a world with one frontend.
fn txn() -> Txn {
    let cfg = "defaults\n    mode http\nfrontend fe\n    bind 127.0.0.1:0\n";
    let loaded = moonbox::config::load_sources(
        &[(PathBuf::from("bench.cfg"), cfg.to_string())],
        Registry::new(),
        &mut |_, _, _| Ok(()),
    )
    .expect("config");
    let world = moonbox::proxy::build_world(&loaded);
    let fe = world.proxy("fe").expect("frontend").clone();
    let addr = SocketAddr::from(([127, 0, 0, 1], 1234));
    let mut t = Txn::new(world, Arc::new(Session::new(addr, addr)), fe, 1);
    t.req = Some(
        http::Request::get("/bench")
            .header("host", "bench.local")
            .body(())
            .expect("request")
            .into_parts()
            .0,
    );
    t
}

fn calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pooled = wasm(Isolation::Pooled, None);
    let native = native();
    let mut t = txn();

    let mut g = c.benchmark_group("call");
    g.bench_function("native fetch noop", |b| {
        b.iter(|| black_box(native.fetch("noop", &mut t, &[])))
    });
    g.bench_function("wasm fetch noop", |b| {
        b.iter(|| black_box(pooled.fetch("noop", &mut t, &[])))
    });
    g.bench_function("native converter noop", |b| {
        b.iter(|| black_box(native.convert("noop", &mut t, Sample::Str("abc".into()), &[])))
    });
    g.bench_function("wasm converter noop", |b| {
        b.iter(|| black_box(pooled.convert("noop", &mut t, Sample::Str("abc".into()), &[])))
    });
    g.bench_function("wasm action noop", |b| {
        b.iter(|| {
            let v = rt.block_on(pooled.action("noop", Facility::HttpReq, &mut t, &[]));
            assert!(matches!(v, Ok(Verdict::Continue)));
        })
    });
    g.bench_function("wasm action sleep 0 (one wait and resume)", |b| {
        let args = ["0".to_string()];
        b.iter(|| black_box(rt.block_on(pooled.action("sleep", Facility::HttpReq, &mut t, &args))))
    });
    g.finish();

    let mut g = c.benchmark_group("lua");
    let lua = lua();
    g.bench_function("lua fetch noop", |b| {
        b.iter(|| black_box(lua.fetch("noop", &mut t, &[])))
    });
    g.bench_function("lua converter noop", |b| {
        b.iter(|| black_box(lua.convert("noop", &mut t, Sample::Str("abc".into()), &[])))
    });
    g.bench_function("lua action noop", |b| {
        b.iter(|| black_box(rt.block_on(lua.action("noop", Facility::HttpReq, &mut t, &[]))))
    });
    g.bench_function("lua action tag_tenant (anchor s2)", |b| {
        b.iter(|| black_box(rt.block_on(lua.action("tag_tenant", Facility::HttpReq, &mut t, &[]))))
    });
    g.finish();

    let mut g = c.benchmark_group("instance");
    let per_request = wasm(Isolation::PerRequest, None);
    g.bench_function("per-request: fresh instance, init and a noop fetch", |b| {
        b.iter(|| {
            let mut t = txn();
            black_box(per_request.fetch("noop", &mut t, &[]))
        })
    });
    let small = wasm_of(guest("headers"), Isolation::PerRequest, None);
    g.bench_function(
        "per-request: fresh small instance, init and an action",
        |b| {
            b.iter(|| {
                let mut t = txn();
                black_box(rt.block_on(small.action("tag_request", Facility::HttpReq, &mut t, &[])))
            })
        },
    );
    g.bench_function("baseline: new transaction and a pooled noop fetch", |b| {
        b.iter(|| {
            let mut t = txn();
            black_box(pooled.fetch("noop", &mut t, &[]))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("fault");
    g.sample_size(20);
    let small = wasm(Isolation::Pooled, Some(1_000_000));
    g.bench_function("fetch exhausting 1M fuel, instance replaced", |b| {
        b.iter(|| black_box(small.fetch("loop", &mut t, &[])))
    });
    g.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);
