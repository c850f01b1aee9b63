//! Istio's own TLS passthrough examples, as `config/examples` holds them, served end to end
//! with the userspace datapath and with the kernel datapath attached: the ingress SNI
//! passthrough task, the egress gateway for HTTPS traffic (edition.cnn.com), wildcard egress
//! (*.wikipedia.org to www.wikipedia.org), and the multi-network east-west gateway
//! (AUTO_PASSTHROUGH names, and catch-all ports the kernel forwards). Clients see what the
//! tasks show: the destination's own certificate, and its 200.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
};

use tests::{
    echo,
    example::{Example, Mode},
    tls::{self, TlsBackend},
    topology,
};

fn ingress_sni_passthrough(mode: Mode) {
    let nginx = Ipv4Addr::new(203, 0, 113, 10);
    let mut ex = Example::network(&[nginx], &[]);
    let _backend = TlsBackend::start(
        &ex.topology.backend,
        SocketAddr::new(nginx.into(), 443),
        ex.ca.issue(&["nginx.example.com"]),
        "Welcome to nginx!",
    );
    ex.serve("ingress-sni-passthrough.yaml", mode);
    // The task: curl --resolve nginx.example.com:$SECURE_INGRESS_PORT:$INGRESS_HOST
    // --cacert example.com.crt https://nginx.example.com -> 200 and nginx's own certificate.
    let (status, subject) = ex.curl_tls("nginx.example.com", 443, "/");
    assert_eq!(status, "200", "{}", ex.sluice().log());
    assert_eq!(subject, "CN=nginx.example.com");
}

tests::in_both_datapaths!(ingress_sni_passthrough: userspace_ingress_sni_passthrough_example, kernel_mode_ingress_sni_passthrough_example);

fn egress_gateway_tls_passthrough(mode: Mode) {
    let cnn = Ipv4Addr::new(203, 0, 113, 11);
    let mut ex = Example::network(&[cnn], &[("edition.cnn.com", cnn)]);
    let _backend = TlsBackend::start(
        &ex.topology.backend,
        SocketAddr::new(cnn.into(), 443),
        ex.ca.issue(&["edition.cnn.com"]),
        "cnn",
    );
    ex.serve("egress-gateway-tls-passthrough.yaml", mode);
    // The task: curl -sSL -o /dev/null -D - https://edition.cnn.com/politics -> 200.
    let (status, subject) = ex.curl_tls("edition.cnn.com", 443, "/politics");
    assert_eq!(status, "200", "{}", ex.sluice().log());
    assert_eq!(subject, "CN=edition.cnn.com");
}

tests::in_both_datapaths!(egress_gateway_tls_passthrough: userspace_egress_gateway_tls_passthrough_example, kernel_mode_egress_gateway_tls_passthrough_example);

fn egress_wildcard_sni(mode: Mode) {
    let wikipedia = Ipv4Addr::new(203, 0, 113, 12);
    let mut ex = Example::network(&[wikipedia], &[("www.wikipedia.org", wikipedia)]);
    let backend = TlsBackend::start(
        &ex.topology.backend,
        SocketAddr::new(wikipedia.into(), 443),
        ex.ca.issue(&["*.wikipedia.org"]),
        "wikipedia",
    );
    ex.serve("egress-wildcard-sni.yaml", mode);
    // The task: https://en.wikipedia.org/wiki/Main_Page and https://de.wikipedia.org/...
    // both reach the one server, the SNI passed through unchanged.
    for host in ["en.wikipedia.org", "de.wikipedia.org"] {
        let (status, subject) = ex.curl_tls(host, 443, "/wiki/Main_Page");
        assert_eq!(status, "200", "{host}\n{}", ex.sluice().log());
        assert_eq!(subject, "CN=*.wikipedia.org");
    }
    assert_eq!(backend.handshakes(), 2);
}

tests::in_both_datapaths!(egress_wildcard_sni: userspace_egress_wildcard_sni_example, kernel_mode_egress_wildcard_sni_example);

/// Sends a ClientHello for `sni` and returns what came back (the echo backends return it).
fn hello_through(ex: &Example, port: u16, sni: &str) -> std::io::Result<Vec<u8>> {
    let hello = tls::minimal_client_hello(sni);
    let target = SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), port);
    ex.topology.client.run(move || {
        let mut stream = TcpStream::connect(target)?;
        stream.write_all(&hello)?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back)?;
        Ok(back)
    })
}

fn multicluster_east_west(mode: Mode) {
    let (v1, v2, istiod) = (
        Ipv4Addr::new(203, 0, 113, 20),
        Ipv4Addr::new(203, 0, 113, 21),
        Ipv4Addr::new(203, 0, 113, 30),
    );
    let mut ex = Example::network(&[v1, v2, istiod], &[]);
    let on_v1 = echo::serve(&ex.topology.backend, SocketAddr::new(v1.into(), 5000), 6);
    let on_v2 = echo::serve(&ex.topology.backend, SocketAddr::new(v2.into(), 5000), 3);
    let on_istiod = echo::serve(
        &ex.topology.backend,
        SocketAddr::new(istiod.into(), 15012),
        1,
    );
    ex.serve("multicluster-east-west.yaml", mode);
    let hello_len = |sni: &str| tls::minimal_client_hello(sni).len() as u64;
    // AUTO_PASSTHROUGH: the SNI names the service port and subset.
    let v1_name = "outbound_.5000_.v1_.helloworld.sample.svc.cluster.local";
    let v2_name = "outbound_.5000_.v2_.helloworld.sample.svc.cluster.local";
    for _ in 0..6 {
        let back = hello_through(&ex, 15443, v1_name).unwrap_or_else(|e| panic!("v1: {e}"));
        assert_eq!(back, tls::minimal_client_hello(v1_name));
    }
    for _ in 0..3 {
        let back = hello_through(&ex, 15443, v2_name).unwrap_or_else(|e| panic!("v2: {e}"));
        assert_eq!(back, tls::minimal_client_hello(v2_name));
    }
    // An unknown service: no route.
    let unknown = hello_through(
        &ex,
        15443,
        "outbound_.5000_.v9_.helloworld.sample.svc.cluster.local",
    );
    assert!(unknown.is_err() || unknown.as_ref().is_ok_and(Vec::is_empty));
    assert_eq!(
        on_v1
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        6 * hello_len(v1_name)
    );
    assert_eq!(
        on_v2
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        3 * hello_len(v2_name)
    );
    // The catch-all istiod port needs no SNI: any bytes go to istiod.
    let back = ex.topology.client.run(move || {
        let mut stream =
            TcpStream::connect(SocketAddr::new(topology::GATEWAY_CLIENT_V4.into(), 15012))?;
        stream.write_all(b"not even TLS")?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut back = Vec::new();
        stream.read_to_end(&mut back).map(|_| back)
    });
    assert_eq!(
        back.unwrap_or_else(|e| panic!("15012: {e}")),
        b"not even TLS"
    );
    assert_eq!(
        on_istiod
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        12
    );
    let dump = ex.sluice().config_dump();
    let in_kernel: Vec<&str> = dump["serving"]["l4_kernel"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let kernel_connections = ex
        .sluice()
        .metric("sluice_l4_kernel_connections_total{listener=\"0.0.0.0:15012\"}");
    if mode == Mode::Kernel {
        assert!(in_kernel.contains(&"0.0.0.0:15012"), "{dump:#}");
        assert_eq!(kernel_connections, Some(1.0));
    } else {
        assert!(in_kernel.is_empty());
    }
    assert_eq!(
        ex.sluice().metric(
            "sluice_sni_handshake_failures_total{listener=\"0.0.0.0:15443\",reason=\"no_route\"}"
        ),
        Some(1.0)
    );
}

tests::in_both_datapaths!(multicluster_east_west: userspace_multicluster_east_west_example, kernel_mode_multicluster_east_west_example);
