//! Helpers shared by the command-line tests.

/// A loopback port free now, so tests that start services may run side by side.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
