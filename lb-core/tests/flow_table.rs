//! The connection table read back from userspace (batched reads, several
//! batches), and the writes connection-state sync makes into it.
use lb_core::datapath::{Datapath, Limits};
use lb_ebpf::abi::{FLOW_FORWARD, FLOW_REPLY, Flow, FlowKey};

fn entry(i: u32) -> (FlowKey, Flow) {
    let key = FlowKey {
        src_addr: i,
        dst_addr: 0x6400_12c6,
        src_port: (i as u16).to_be(),
        dst_port: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    let flow = Flow {
        last_seen_ns: u64::from(i) * 7,
        backend: i % 13,
        kind: if i.is_multiple_of(2) {
            FLOW_FORWARD
        } else {
            FLOW_REPLY
        },
        rw_src_port: i as u16,
        ..Default::default()
    };
    (key, flow)
}

#[test]
fn the_connection_table_reads_back_exactly_what_was_written() {
    lb_testlab::require_root();
    let mut dp = Datapath::load(Limits {
        max_vips: 2,
        max_backends: 16,
        ring_stride: 251,
        flow_capacity: 65_536,
        new_flow_cap: 0,
    })
    .expect("load");
    // More than two read batches, fewer than the capacity (no LRU eviction).
    let mut written: Vec<(FlowKey, Flow)> = (0..10_017).map(entry).collect();
    dp.write_flows(&written).expect("write");
    let mut read = dp.flows().expect("read");
    let order = |e: &(FlowKey, Flow)| e.0.src_addr;
    written.sort_by_key(order);
    read.sort_by_key(order);
    assert_eq!(read.len(), written.len());
    assert!(read == written, "entries differ");
    assert_eq!(dp.flow(&written[5].0), Some(written[5].1));
    dp.remove_flow(&written[5].0).expect("remove");
    dp.remove_flow(&written[5].0)
        .expect("removing an absent entry is fine");
    assert_eq!(dp.flow(&written[5].0), None);
    assert_eq!(dp.flows().expect("read").len(), written.len() - 1);
}
