//! `exportTo` as Istio applies it to a gateway: a VirtualService, ServiceEntry or
//! DestinationRule is used by a gateway only if it is exported to the namespace the gateway
//! runs in (`--gateway-namespace`): `*` (or no `exportTo`, Istio's default) to every
//! namespace, `.` to its own, a name to that namespace, `~` (ServiceEntries) to none.
//! Objects the gateway cannot see are left out before compiling, each with an info.
use super::{Checked, Object, Severity, Spec, diagnostic::codes};

/// Whether an object of namespace `own` exported to `export_to` is visible in `gateway`.
pub fn exported_to(export_to: &[String], own: &str, gateway: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|entry| match entry.as_str() {
            "*" => true,
            "." => own == gateway,
            "~" => false,
            namespace => namespace == gateway,
        })
}

fn export_to(object: &Object) -> &[String] {
    match &object.spec {
        Spec::VirtualService(spec) => &spec.export_to,
        Spec::ServiceEntry(spec) => &spec.export_to,
        Spec::DestinationRule(spec) => &spec.export_to,
        Spec::Gateway(_) => &[],
    }
}

/// `checked` as a gateway running in `namespace` sees it.
pub fn for_gateway(mut checked: Checked, namespace: &str) -> Checked {
    let (visible, hidden): (Vec<Object>, Vec<Object>) = checked
        .objects
        .into_iter()
        .partition(|o| exported_to(export_to(o), o.namespace(), namespace));
    for object in hidden {
        let message = format!(
            "exportTo {:?} does not reach the gateway's namespace {namespace:?} (--gateway-namespace): the gateway does not use it",
            export_to(&object)
        );
        checked.diagnostics.push(object.diagnostic(
            Severity::Info,
            codes::NOT_EXPORTED,
            "spec.exportTo",
            message,
        ));
    }
    checked.objects = visible;
    checked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_as_istio_reads_export_to() {
        let to = |entries: &[&str]| entries.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let cases: &[(&[&str], &str, bool)] = &[
            (&[], "default", true),
            (&["*"], "default", true),
            (&["."], "default", false),
            (&["."], "istio-system", true),
            (&["istio-system"], "default", true),
            (&["team-a", "team-b"], "default", false),
            (&["~"], "istio-system", false),
        ];
        for (entries, own, want) in cases {
            assert_eq!(
                exported_to(&to(entries), own, "istio-system"),
                *want,
                "{entries:?} from {own}"
            );
        }
    }

    #[test]
    fn hidden_objects_are_left_out_with_an_info() {
        let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: private, namespace: shop}
spec: {hosts: [a.example.com], gateways: [istio-system/gw], exportTo: ['.'], http: [{route: [{destination: {host: b}}]}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shared, namespace: shop}
spec: {hosts: [b.example.com], gateways: [istio-system/gw], exportTo: [istio-system], http: [{route: [{destination: {host: b}}]}]}
";
        let checked = crate::config::check_text("vs.yaml", text);
        assert_eq!(checked.objects.len(), 2, "{:?}", checked.diagnostics);
        let seen = for_gateway(checked, "istio-system");
        let names: Vec<&str> = seen
            .objects
            .iter()
            .map(|o| o.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["shared"]);
        let info = seen
            .diagnostics
            .iter()
            .find(|d| d.code == codes::NOT_EXPORTED)
            .unwrap_or_else(|| panic!("no info: {:?}", seen.diagnostics));
        assert_eq!(info.severity, Severity::Info);
        assert!(info.message.contains("istio-system"), "{}", info.message);
    }
}
