//! Runs one full compute repeatedly, for profilers: `perf record cargo run --release -p kproxy-benches --example profile_compute -- 10000 2`.
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (services, endpoints) = (args.first().copied().unwrap_or(10_000), args.get(1).copied().unwrap_or(2));
    let snap = kproxy_benches::snapshot(services, endpoints);
    let node = kproxy_benches::node_context();
    let start = std::time::Instant::now();
    for _ in 0..20 {
        std::hint::black_box(proxy_core::compute(&snap, &node));
    }
    println!("{:?} per compute", start.elapsed() / 20);
}
