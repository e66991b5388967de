//! A small authoritative DNS server over UDP for --discovery-srv's tests: SRV and A records from
//! a table; any other name is NXDOMAIN, any other type of a known name an empty answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// The zone's records.
#[derive(Default, Clone)]
pub struct Zone {
    srv: Vec<(String, String, u16)>,
    a: Vec<(String, Ipv4Addr)>,
}

impl Zone {
    /// `_service._tcp.domain` -> `host:port`.
    pub fn srv(mut self, name: &str, host: &str, port: u16) -> Zone {
        self.srv.push((absolute(name), absolute(host), port));
        self
    }

    /// `host` -> `ip`.
    pub fn a(mut self, host: &str, ip: Ipv4Addr) -> Zone {
        self.a.push((absolute(host), ip));
        self
    }

    fn answer(&self, query: &Message) -> Message {
        let mut reply = Message::response(query.metadata.id, OpCode::Query);
        reply.metadata.authoritative = true;
        reply.metadata.recursion_desired = query.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        let Some(q) = query.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return reply;
        };
        reply.add_query(q.clone());
        let asked = q.name().to_ascii().to_lowercase();
        let mut known = false;
        for (name, host, port) in &self.srv {
            if *name == asked {
                known = true;
                if q.query_type() == RecordType::SRV {
                    let target = Name::from_ascii(host).unwrap();
                    let srv = RData::SRV(SRV::new(0, 10, *port, target));
                    reply.add_answer(Record::from_rdata(q.name().clone(), 5, srv));
                }
            }
        }
        for (name, ip) in &self.a {
            if *name == asked {
                known = true;
                if q.query_type() == RecordType::A {
                    let a = RData::A(A(*ip));
                    reply.add_answer(Record::from_rdata(q.name().clone(), 5, a));
                }
            }
        }
        if !known {
            reply.metadata.response_code = ResponseCode::NXDomain;
        }
        reply
    }
}

fn absolute(name: &str) -> String {
    let name = name.to_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

/// Serves `zone` on UDP `addr` until the test ends; the address it listens on.
pub async fn serve(addr: SocketAddr, zone: Zone) -> std::io::Result<SocketAddr> {
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    let local = socket.local_addr()?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if let Ok(bytes) = zone.answer(&query).to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    Ok(local)
}

/// A resolver that asks only the server at `addr`.
pub fn resolver(addr: SocketAddr) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let server = NameServerConfig::new(addr.ip(), true, vec![udp]);
    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    hickory_resolver::TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .build()
        .unwrap()
}
