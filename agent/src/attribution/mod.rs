//! Attribution: [`flow`] is the rule that makes each request count once (the socket's role and
//! its peer decide the flow it is booked to).

pub mod flow;
