//! A tiny authoritative DNS server for tests: answers A queries from a table the test can
//! change, with a TTL the test chooses; and the resolv.conf that points a namespace at it.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::{RData, Record, RecordType, rdata::A},
    serialize::binary::{BinDecodable, BinEncodable},
};

use crate::netns::NetNs;

type Table = Arc<Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>>;

pub struct DnsServer {
    table: Table,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves on `addr` (UDP) inside `ns`; returns once bound.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> DnsServer {
        let table: Table = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn({
            let (table, stop) = (table.clone(), stop.clone());
            move || {
                let socket =
                    UdpSocket::bind(addr).unwrap_or_else(|e| panic!("DNS server on {addr}: {e}"));
                socket
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = bound_tx.send(());
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Acquire) {
                    let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answer(&table, &buf[..n]) {
                        let _ = socket.send_to(&reply, peer);
                    }
                }
            }
        });
        bound_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("DNS server did not start: {e}"));
        DnsServer {
            table,
            stop,
            thread: Some(thread),
        }
    }

    /// Answers `name` (without trailing dot) with `addresses` and `ttl` from now on.
    pub fn set(&self, name: &str, addresses: &[Ipv4Addr], ttl: u32) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.insert(name.to_ascii_lowercase(), (addresses.to_vec(), ttl));
    }

    /// Answers NXDOMAIN for `name` from now on.
    pub fn remove(&self, name: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&name.to_ascii_lowercase());
    }
}

fn answer(table: &Table, request: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_bytes(request).ok()?;
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_authoritative(true);
    response.add_queries(request.queries().to_vec());
    let table = table.lock().unwrap_or_else(|e| e.into_inner());
    let mut known = false;
    for query in request.queries() {
        let name = query
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if let Some((addresses, ttl)) = table.get(&name) {
            known = true;
            if query.query_type() == RecordType::A {
                for ip in addresses {
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        *ttl,
                        RData::A(A(*ip)),
                    ));
                }
            }
        }
    }
    if !known {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response.to_bytes().ok()
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over `/etc/resolv.conf` for
/// processes it starts in that namespace; removed on drop.
pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    pub fn new(ns: &NetNs, nameserver: Ipv4Addr) -> NetnsResolvConf {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let conf = format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n");
        std::fs::write(dir.join("resolv.conf"), conf)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        NetnsResolvConf { dir }
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        // Only removed when empty: other namespaces may have their own files there.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}
