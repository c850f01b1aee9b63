//! Chaos under steady L4 load, in XDP and in TC mode: while 30 connections established
//! through the kernel each make a request every 100 ms and a client opens a new connection
//! every 10 ms, the gateway goes through, in turn: a backend killed and brought back, the
//! daemon killed with SIGKILL and started again, a config reload every second for 30 s, a
//! spoofed SYN flood, and an invalid config dropped in. Each phase reports connections
//! attempted, failed, and established connections lost, and asserts what the design
//! promises: nothing is lost or refused except what the dead backend held and the new
//! connections sent to it before its health checks failed. Bounded: test address ranges,
//! at most 20,000 new connections, a flood of 200,000 SYNs, about 80 s per mode.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tests::{
    bpffs::TempBpffs,
    load::{MESSAGE, RrServer},
    root,
    sluice::{Sluice, replace_config},
    topology::{self, Topology},
};

const PORT: u16 = 7000;
const BACKENDS: usize = 3;
const ESTABLISHED: usize = 30;

/// The two modes share the machine's two cores with a SYN flood each: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn xdp_chaos_under_steady_load() {
    chaos(
        "xdp_chaos_under_steady_load",
        topology::SLUICE_XDP_ARGS,
        false,
    );
}

#[test]
fn tc_chaos_under_steady_load() {
    chaos("tc_chaos_under_steady_load", topology::SLUICE_TC_ARGS, true);
}

/// What one phase saw.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    attempted: u64,
    failed: u64,
    lost: u64,
}

const PHASES: [&str; 6] = [
    "steady",
    "backend killed and restored",
    "daemon killed -9 and restarted",
    "config reload every second, 30 s",
    "SYN flood, 20k/s for 10 s",
    "invalid config dropped in",
];

/// The load: new connections and established ones, each counted under the phase that is on.
struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tallies: Arc<Mutex<[Tally; PHASES.len()]>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(topology: &Topology, vip: SocketAddr) -> Load {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tallies = Arc::new(Mutex::new([Tally::default(); PHASES.len()]));
        let count = {
            let (phase, tallies) = (phase.clone(), tallies.clone());
            move |f: &dyn Fn(&mut Tally)| {
                let mut tallies = tallies.lock().unwrap_or_else(|e| e.into_inner());
                f(&mut tallies[phase.load(Ordering::Acquire)]);
            }
        };
        let new_connections = topology.client.spawn({
            let (stop, count) = (stop.clone(), count.clone());
            move || {
                let mut made = 0;
                while !stop.load(Ordering::Acquire) && made < 20_000 {
                    made += 1;
                    let outcome = connect(vip).and_then(|mut stream| request(&mut stream));
                    count(&|t| {
                        t.attempted += 1;
                        t.failed += u64::from(outcome.is_err());
                    });
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let established = topology.client.spawn({
            let (stop, count) = (stop.clone(), count.clone());
            move || {
                let mut streams: Vec<Option<TcpStream>> =
                    (0..ESTABLISHED).map(|_| connect(vip).ok()).collect();
                while !stop.load(Ordering::Acquire) {
                    for slot in &mut streams {
                        match slot.as_mut().map(request) {
                            Some(Ok(())) => {}
                            Some(Err(_)) => {
                                count(&|t| t.lost += 1);
                                *slot = connect(vip).ok();
                            }
                            // Replaced after a loss and not connected yet: try again.
                            None => *slot = connect(vip).ok(),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Load {
            phase,
            stop,
            tallies,
            threads: vec![new_connections, established],
        }
    }

    fn enter(&self, phase: usize) {
        self.phase.store(phase, Ordering::Release);
    }

    fn finish(self) -> [Tally; PHASES.len()] {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads {
            thread
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
        *self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn connect(vip: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.set_write_timeout(Some(Duration::from_secs(3)))?;
    Ok(stream)
}

/// One request and its answer (the request-response servers' protocol).
fn request(stream: &mut TcpStream) -> std::io::Result<()> {
    let mut answer = [0u8; MESSAGE];
    stream.write_all(&[0x5a; MESSAGE])?;
    stream.read_exact(&mut answer)?;
    Ok(())
}

fn chaos(test: &str, datapath: &[&str], default_offloads: bool) {
    if !root::can_run(test) {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut topology = Topology::builder().backends(BACKENDS);
    if default_offloads {
        topology = topology.default_offloads();
    }
    let topology = topology.build();
    // The flood's sources are routable, as on the internet.
    topology.gateway.ip(&[
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        &topology::CLIENT_V4.to_string(),
    ]);
    let backends: Vec<SocketAddr> = (0..BACKENDS)
        .map(|i| SocketAddr::new(topology::backend_v4(i).into(), PORT))
        .collect();
    let mut servers: Vec<Option<RrServer>> = backends
        .iter()
        .map(|b| Some(RrServer::start(&topology.backend, *b)))
        .collect();
    let weighted = |first: u32| -> Vec<(IpAddr, u32)> {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.ip(), if i == 0 { first } else { 1 }))
            .collect()
    };
    let bpffs = TempBpffs::new();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("l4.yaml");
    std::fs::write(&file, tests::example::l4_config(PORT, &weighted(1)))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut args: Vec<String> = vec![
        "-f".into(),
        dir.path().to_string_lossy().into_owned(),
        "--bpffs".into(),
        bpffs.path().to_string_lossy().into_owned(),
        "--instance".into(),
        "chaos".into(),
        "--health-check-interval".into(),
        "500ms".into(),
    ];
    args.extend(datapath.iter().map(|s| s.to_string()));
    let mut sluice = Sluice::start(&topology.gateway, &args);
    let vip = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), PORT);
    let load = Load::start(&topology, vip);
    std::thread::sleep(Duration::from_secs(3));

    load.enter(1);
    // The third backend goes away; two failed checks 500 ms apart take it out of the
    // Maglev tables, so after 2 s it gets no new connection; back, it gets them again.
    let sent_to_third = |sluice: &Sluice| {
        sluice
            .metric(&format!(
                "sluice_l4_kernel_backend_connections_total{{backend=\"{}\"}}",
                backends[2]
            ))
            .unwrap_or(-1.0)
    };
    servers[2] = None;
    std::thread::sleep(Duration::from_secs(2));
    let out = sent_to_third(&sluice);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        sent_to_third(&sluice),
        out,
        "new connections still went to the dead backend"
    );
    servers[2] = Some(RrServer::start(&topology.backend, backends[2]));
    std::thread::sleep(Duration::from_secs(3));
    let back = sent_to_third(&sluice);
    assert!(
        back > out + 10.0,
        "the restored backend got {back} - {out} connections"
    );

    load.enter(2);
    sluice.signal(Signal::SIGKILL);
    let (status, _) = sluice.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    // The kernel serves alone for a while.
    std::thread::sleep(Duration::from_secs(2));
    sluice = Sluice::start(&topology.gateway, &args);
    std::thread::sleep(Duration::from_secs(3));

    load.enter(3);
    let generation = |sluice: &Sluice| sluice.metric("sluice_config_generation").unwrap_or(-1.0);
    let first = generation(&sluice);
    let started = Instant::now();
    for i in 0..30u32 {
        replace_config(
            &file,
            &tests::example::l4_config(PORT, &weighted(1 + i % 3)),
        );
        let next = started + Duration::from_secs(u64::from(i) + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let reloads = generation(&sluice) - first;
    assert!(reloads >= 20.0, "only {reloads} of 30 reloads applied");

    load.enter(4);
    let report = tests::flood::syn_flood(
        &topology.client,
        std::net::SocketAddrV4::new(topology::GATEWAY_CLIENT_V4, PORT),
        20_000,
        Duration::from_secs(10),
    )
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    std::thread::sleep(Duration::from_secs(1));

    load.enter(5);
    let rejected = || {
        sluice
            .metric("sluice_config_reloads_total{result=\"rejected\"}")
            .unwrap_or(0.0)
    };
    let before = rejected();
    replace_config(
        &file,
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nspec: [",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejected() <= before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(rejected() > before, "the invalid config was not rejected");
    std::thread::sleep(Duration::from_secs(4));
    let tallies = load.finish();
    drop(servers);

    eprintln!(
        "{test}: flood {} SYNs at {:.0}/s",
        report.sent,
        report.rate()
    );
    eprintln!("| phase | new connections attempted | failed | established lost |");
    eprintln!("|---|---|---|---|");
    for (name, t) in PHASES.iter().zip(&tallies) {
        eprintln!("| {name} | {} | {} | {} |", t.attempted, t.failed, t.lost);
    }
    for (i, (name, t)) in PHASES.iter().zip(&tallies).enumerate() {
        assert!(
            t.attempted > 50,
            "{name}: only {} new connections",
            t.attempted
        );
        if i == 1 {
            // What the dead backend held is lost; new connections sent to it fail until
            // its health checks do (its third of them, for about a second).
            assert!(t.lost <= ESTABLISHED as u64, "{name}: {t:?}");
            assert!(t.failed * 10 <= t.attempted, "{name}: {t:?}");
        } else {
            assert_eq!((t.failed, t.lost), (0, 0), "{name}: {t:?}");
        }
    }
}
