//! A `BPF_PROG_TEST_RUN` harness: loads the kernel programs without pinning or attaching,
//! runs crafted frames through XDP or TC, and reads back the action, the output bytes and
//! the per-CPU counters.
use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use gateway_common::{Counters, PacketReason, map_names, program_names};

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
        // Room for a frame that grows (encapsulation, later) and the skb's own headroom.
        let mut output = vec![0u8; input.len() + 512];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut output),
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
        }
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
                values.iter().fold(Counters::default(), |a, c| Counters {
                    packets: a.packets + c.packets,
                    bytes: a.bytes + c.bytes,
                })
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
