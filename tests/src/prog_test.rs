//! A `BPF_PROG_TEST_RUN` harness: loads the kernel programs without pinning or attaching,
//! runs crafted frames through XDP or TC, and reads back the action, the output bytes and
//! the per-CPU counters.
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use gateway_common::{
    Counters, PacketReason,
    l4::{Backend as L4Backend, Flow, FlowKey, L4Counters, Listener, ListenerKey},
    map_names, program_names,
    select::MAGLEV_TABLE_SIZE,
};

/// Which entry point a fixture runs through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// What one run returned.
#[derive(Debug)]
pub struct RunResult {
    pub return_value: u32,
    pub output: Vec<u8>,
    /// The kernel's time per run of the program (`BPF_PROG_TEST_RUN`'s duration, averaged
    /// over the repeats).
    pub duration: std::time::Duration,
}

pub struct Datapath {
    ebpf: Ebpf,
}

impl Datapath {
    /// Loads a private copy of the programs and maps (nothing pinned, nothing attached).
    pub fn load() -> Datapath {
        let object = crate::root::ebpf_object();
        let mut ebpf = EbpfLoader::new()
            .load(&object)
            .unwrap_or_else(|e| panic!("loading the eBPF object: {e}"));
        let xdp: &mut Xdp = program(&mut ebpf, program_names::XDP_INGRESS);
        xdp.load()
            .unwrap_or_else(|e| panic!("verifier rejected {}: {e:?}", program_names::XDP_INGRESS));
        let tc: &mut SchedClassifier = program(&mut ebpf, program_names::TC_INGRESS);
        tc.load()
            .unwrap_or_else(|e| panic!("verifier rejected {}: {e:?}", program_names::TC_INGRESS));
        Datapath { ebpf }
    }

    /// Runs `input` through `hook` once.
    pub fn run(&mut self, hook: Hook, input: &[u8]) -> RunResult {
        self.run_on(hook, input, None)
    }

    /// Runs `input` through XDP as if received on `ingress_ifindex`, a device in the calling
    /// thread's network namespace (FIB lookups happen there).
    pub fn run_xdp_on(&mut self, input: &[u8], ingress_ifindex: u32) -> RunResult {
        self.run_on(Hook::Xdp, input, Some(ingress_ifindex))
    }

    /// Runs `input` through `hook` as if received on `ingress_ifindex` (see `run_xdp_on`).
    pub fn run_on_device(&mut self, hook: Hook, input: &[u8], ingress_ifindex: u32) -> RunResult {
        self.run_on(hook, input, Some(ingress_ifindex))
    }

    /// Runs `input` `repeat` times in one call; the kernel runs the program on the same
    /// buffer each time, so a packet the program rewrites meets its own rewrite from the
    /// second run on.
    pub fn run_repeated(
        &mut self,
        hook: Hook,
        input: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> RunResult {
        self.run_with(hook, input, Some(ingress_ifindex), repeat)
    }

    fn run_on(&mut self, hook: Hook, input: &[u8], ingress_ifindex: Option<u32>) -> RunResult {
        self.run_with(hook, input, ingress_ifindex, 1)
    }

    fn run_with(
        &mut self,
        hook: Hook,
        input: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> RunResult {
        // Room for a frame that grows (encapsulation, later) and the skb's own headroom.
        let mut output = vec![0u8; input.len() + 512];
        let ctx: Option<Vec<u8>> = ingress_ifindex.map(|ifindex| {
            let words: &[u32] = match hook {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex.
                Hook::Xdp => &[0, input.len() as u32, 0, ifindex, 0, 0],
                // struct __sk_buff up to ifindex (word 10): the kernel takes the skb's device
                // from `ifindex` and its input device from `ingress_ifindex` (word 9); the
                // fields before them must be zero.
                Hook::Tc => &[0, 0, 0, 0, 0, 0, 0, 0, 0, ifindex, ifindex],
            };
            words.iter().flat_map(|w| w.to_ne_bytes()).collect()
        });
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
            ctx_in: ctx.as_deref(),
            repeat,
            ..Default::default()
        };
        let result = match hook {
            Hook::Xdp => program::<Xdp>(&mut self.ebpf, program_names::XDP_INGRESS).test_run(opts),
            Hook::Tc => {
                program::<SchedClassifier>(&mut self.ebpf, program_names::TC_INGRESS).test_run(opts)
            }
        }
        .unwrap_or_else(|e| {
            panic!(
                "BPF_PROG_TEST_RUN on {hook:?} with {} bytes: {e:?}",
                input.len()
            )
        });
        output.truncate(result.data_size_out as usize);
        RunResult {
            return_value: result.return_value,
            output,
            duration: result.duration,
        }
    }

    /// Serves `listener` from its Maglev slot, filled with `table` (backend ids): the table
    /// first, then the listener, in the daemon's order.
    pub fn put_listener(&mut self, key: ListenerKey, listener: Listener, table: &[u32]) {
        let mut tables: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(map_names::L4_TABLES)
                .unwrap_or_else(|| panic!("no table map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let base = listener.set_slot * MAGLEV_TABLE_SIZE;
        for (i, id) in table.iter().enumerate() {
            tables
                .set(base + i as u32, id, 0)
                .unwrap_or_else(|e| panic!("table: {e}"));
        }
        let mut listeners: aya::maps::HashMap<_, ListenerKey, Listener> =
            aya::maps::HashMap::try_from(
                self.ebpf
                    .map_mut(map_names::L4_LISTENERS)
                    .unwrap_or_else(|| panic!("no listener map")),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        listeners
            .insert(key, listener, 0)
            .unwrap_or_else(|e| panic!("listener: {e}"));
    }

    /// Marks `ip` as one of the node's addresses (wildcard listeners answer on it).
    pub fn put_local(&mut self, ip: std::net::IpAddr) {
        let mut local: aya::maps::HashMap<_, [u8; 16], u8> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut(map_names::L4_LOCAL_ADDRS)
                .unwrap_or_else(|| panic!("no local address map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        local
            .insert(gateway_common::addr::to_mapped(ip), 1, 0)
            .unwrap_or_else(|e| panic!("local address: {e}"));
    }

    /// Writes the NAT's settings (what the daemon writes at start).
    pub fn put_nat_config(&mut self, config: gateway_common::l4::NatConfig) {
        let mut array: Array<_, gateway_common::l4::NatConfig> = Array::try_from(
            self.ebpf
                .map_mut(map_names::L4_CONFIG)
                .unwrap_or_else(|| panic!("no NAT config map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        array
            .set(0, config, 0)
            .unwrap_or_else(|e| panic!("NAT config: {e}"));
    }

    /// The Maglev table array (`L4_TABLES`), for reading and for writes the test makes
    /// itself.
    pub fn tables(&self) -> Array<&aya::maps::MapData, u32> {
        Array::try_from(
            self.ebpf
                .map(map_names::L4_TABLES)
                .unwrap_or_else(|| panic!("no table map")),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Marks `ifindex` as a device `XDP_TX` frames reliably leave (what the daemon does for
    /// every attached device that is not a veth).
    pub fn put_xdp_tx(&mut self, ifindex: u32) {
        let mut devices: aya::maps::HashMap<_, u32, u8> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut(map_names::L4_XDP_TX)
                .unwrap_or_else(|| panic!("no XDP_TX device map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        devices
            .insert(ifindex, 1, 0)
            .unwrap_or_else(|e| panic!("XDP_TX device: {e}"));
    }

    /// Sets the SYN flood guard's state.
    pub fn put_syn_guard(&mut self, guard: gateway_common::l4::SynGuard) {
        let mut array: Array<_, gateway_common::l4::SynGuard> = Array::try_from(
            self.ebpf
                .map_mut(map_names::L4_SYN_GUARD)
                .unwrap_or_else(|| panic!("no SYN guard map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        array
            .set(0, guard, 0)
            .unwrap_or_else(|e| panic!("SYN guard: {e}"));
    }

    /// The SYN flood guard's state.
    pub fn syn_guard(&self) -> gateway_common::l4::SynGuard {
        let array: Array<_, gateway_common::l4::SynGuard> = Array::try_from(
            self.ebpf
                .map(map_names::L4_SYN_GUARD)
                .unwrap_or_else(|| panic!("no SYN guard map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        array
            .get(&0, 0)
            .unwrap_or_else(|e| panic!("SYN guard: {e}"))
    }

    /// Marks every address of the fixture router as the node's.
    pub fn put_router_addresses(&mut self) {
        for address in crate::router::ADDRESSES {
            self.put_local(address.parse().unwrap_or_else(|e| panic!("{address}: {e}")));
        }
    }

    pub fn put_backend(&mut self, id: u32, backend: L4Backend) {
        let mut backends: Array<_, L4Backend> = Array::try_from(
            self.ebpf
                .map_mut(map_names::L4_BACKENDS)
                .unwrap_or_else(|| panic!("no backend map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        backends
            .set(id, backend, 0)
            .unwrap_or_else(|e| panic!("backend: {e}"));
    }

    /// Allows redirects to `ifindex`.
    pub fn put_device(&mut self, ifindex: u32) {
        let mut devices: DevMapHash<_> = DevMapHash::try_from(
            self.ebpf
                .map_mut(map_names::L4_DEVICES)
                .unwrap_or_else(|| panic!("no device map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        devices
            .insert(ifindex, ifindex, None, 0)
            .unwrap_or_else(|e| panic!("device: {e}"));
    }

    /// The established flow table, or the half-open one (`map_names::L4_HALF_OPEN`).
    fn flow_table(&self, name: &str) -> aya::maps::HashMap<&aya::maps::MapData, FlowKey, Flow> {
        aya::maps::HashMap::try_from(
            self.ebpf
                .map(name)
                .unwrap_or_else(|| panic!("no {name} map")),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A flow entry, established or half-open.
    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.established_flow(key)
            .or_else(|| self.half_open_flow(key))
    }

    /// A flow entry of the established table only.
    pub fn established_flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flow_table(map_names::L4_FLOWS).get(key, 0).ok()
    }

    /// A flow entry of the half-open table only.
    pub fn half_open_flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flow_table(map_names::L4_HALF_OPEN).get(key, 0).ok()
    }

    /// Entries of both tables.
    pub fn flow_count(&self) -> usize {
        [map_names::L4_FLOWS, map_names::L4_HALF_OPEN]
            .iter()
            .map(|name| self.flow_table(name).keys().filter(Result::is_ok).count())
            .sum()
    }

    pub fn put_flow(&mut self, key: FlowKey, flow: Flow) {
        let mut flows: aya::maps::HashMap<_, FlowKey, Flow> = aya::maps::HashMap::try_from(
            self.ebpf
                .map_mut(map_names::L4_FLOWS)
                .unwrap_or_else(|| panic!("no flow map")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        flows
            .insert(key, flow, 0)
            .unwrap_or_else(|e| panic!("flow: {e}"));
    }

    /// The kernel's L4 counters of listener or backend `id` (`map` is one of the two counter
    /// maps), summed over CPUs.
    pub fn l4_counters(&self, map: &str, id: u32) -> L4Counters {
        let array: PerCpuArray<_, L4Counters> =
            PerCpuArray::try_from(self.ebpf.map(map).unwrap_or_else(|| panic!("no {map} map")))
                .unwrap_or_else(|e| panic!("{e}"));
        let values = array
            .get(&id, 0)
            .unwrap_or_else(|e| panic!("{map}[{id}]: {e}"));
        values.iter().sum()
    }

    /// Counters of every reason, summed over CPUs, in reason order.
    pub fn counters(&self) -> Vec<Counters> {
        let map = self
            .ebpf
            .map(map_names::REASON_COUNTERS)
            .unwrap_or_else(|| panic!("no {} map", map_names::REASON_COUNTERS));
        let array: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).unwrap_or_else(|e| panic!("REASON_COUNTERS: {e}"));
        PacketReason::ALL
            .iter()
            .map(|r| {
                let values = array
                    .get(&r.index(), 0)
                    .unwrap_or_else(|e| panic!("reading counters: {e}"));
                values.iter().sum()
            })
            .collect()
    }
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut P
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
    <&'a mut P as TryFrom<&'a mut aya::programs::Program>>::Error: std::fmt::Debug,
{
    let program = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("no program {name}"));
    program
        .try_into()
        .unwrap_or_else(|e| panic!("program {name} has the wrong type: {e:?}"))
}
