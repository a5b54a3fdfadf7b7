//! podmeter's kernel programs: `cgroup_skb` ingress/egress see every TCP segment of the sockets in
//! the attached cgroup tree; `sock_ops` tells connection roles and closes.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic add on map values needs core::intrinsics on BPF"
)]

mod accounting;
mod handshake;
mod http;
mod maps;
mod packet;
mod state;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_skb, sock_ops},
    programs::{SkBuffContext, SockOpsContext},
};
use podmeter_common::{Connection, names, role, stat};

use crate::{
    accounting::bump,
    maps::{CONNECTIONS, shared_name},
};

/// cgroup programs return 1 to let the packet through: podmeter only observes.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
fn podmeter_ingress(ctx: SkBuffContext) -> i32 {
    state::on_packet(&ctx, true);
    PASS
}

#[cgroup_skb(egress)]
fn podmeter_egress(ctx: SkBuffContext) -> i32 {
    state::on_packet(&ctx, false);
    PASS
}

#[sock_ops]
fn podmeter_sock_ops(ctx: SockOpsContext) -> u32 {
    // SAFETY: helper called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx, cookie, role::CLIENT),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if handshake::adopt(&ctx, cookie) {
                request_close_callbacks(&ctx);
                bump(stat::CONNECTIONS_OPENED);
            } else {
                established(&ctx, cookie, role::SERVER);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => state::on_close(cookie),
        _ => {}
    }
    1
}

shared_name!(podmeter_ingress, names::INGRESS);
shared_name!(podmeter_egress, names::EGRESS);
shared_name!(podmeter_sock_ops, names::SOCK_OPS);

#[inline(always)]
fn established(ctx: &SockOpsContext, cookie: u64, conn_role: u32) {
    request_close_callbacks(ctx);
    match CONNECTIONS.insert(&cookie, &Connection::new(conn_role), u64::from(BPF_NOEXIST)) {
        Ok(()) => bump(stat::CONNECTIONS_OPENED),
        Err(_) => bump(stat::CONNECTION_TABLE_FULL),
    }
}

/// Asks for state callbacks so the close of this connection reaches `on_close`.
#[inline(always)]
fn request_close_callbacks(ctx: &SockOpsContext) {
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
