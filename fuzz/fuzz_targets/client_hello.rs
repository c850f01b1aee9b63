//! The ClientHello parser against arbitrary bytes: it never panics, never claims more bytes
//! than it was given, asks only for more than it has, and a hello it completes parses the
//! same from exactly its own records. The parser file is compiled here on its own (it has
//! no dependencies), so this target builds in seconds.
#![no_main]

#[path = "../../gateway-user/src/proxy/sni/client_hello.rs"]
mod client_hello;

use client_hello::{MAX_CLIENT_HELLO, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete(hello)) => {
            assert!(hello.len <= data.len() && hello.len <= MAX_CLIENT_HELLO);
            if let Some(name) = &hello.server_name {
                assert!(!name.is_empty() && name.len() <= 255);
                assert!(name.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
            }
            // The records it named are the whole hello: the same answer from them alone.
            assert_eq!(parse(&data[..hello.len]), Ok(Parsed::Complete(hello)));
        }
        Ok(Parsed::Incomplete { needed }) => {
            assert!(needed > data.len() && needed <= MAX_CLIENT_HELLO + 5);
        }
        Err(_) => {}
    }
});
