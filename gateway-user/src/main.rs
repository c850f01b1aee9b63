// jemalloc: the proxies allocate per request, and glibc's malloc costs them measurably more
// (docs/bench.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    gateway_user::main()
}
