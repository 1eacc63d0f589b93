//! Microbenchmarks of the per-PDU work on the data path: framing a PDU out
//! of a receive buffer, encoding a response, and CRC32C digests.
//! Run with `cargo bench -p iscsi`.

use divan::{black_box, Bencher};
use iscsi::digest::crc32c;
use iscsi::pdu::{self, Bhs, Digests, Itt, Opcode, Pdu, Residual};

fn main() {
    divan::main();
}

fn write_cmd(len: usize) -> Vec<u8> {
    let mut b = Bhs::new(Opcode::ScsiCommand);
    b.set_flags(0xa0);
    b.set_itt(Itt(7));
    b.set_u32_at(20, len as u32);
    Pdu::with_data(b, vec![0x5a; len]).encode(Digests::default())
}

#[divan::bench(args = [0, 4096, 65536, 262144])]
fn decode_view(bencher: Bencher, len: usize) {
    let wire = write_cmd(len);
    bencher
        .counter(divan::counter::BytesCount::new(wire.len()))
        .bench(|| {
            pdu::decode_view(black_box(&wire), Digests::default(), 1 << 20)
                .unwrap()
                .unwrap()
        });
}

#[divan::bench(args = [4096, 65536])]
fn decode_view_with_digests(bencher: Bencher, len: usize) {
    let dg = Digests {
        header: true,
        data: true,
    };
    let mut b = Bhs::new(Opcode::DataOut);
    b.set_itt(Itt(9));
    let wire = Pdu::with_data(b, vec![1; len]).encode(dg);
    bencher
        .counter(divan::counter::BytesCount::new(wire.len()))
        .bench(|| {
            pdu::decode_view(black_box(&wire), dg, 1 << 20)
                .unwrap()
                .unwrap()
        });
}

#[divan::bench]
fn encode_scsi_response_with_sense() -> Vec<u8> {
    let sense = [0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0];
    pdu::scsi_response(Itt(1), 2, Residual::Underflow(512), black_box(&sense))
        .encode(Digests::default())
}

#[divan::bench]
fn data_in_header() -> Bhs {
    pdu::data_in_header(
        Itt(3),
        1 << 48,
        0,
        0,
        black_box(4096),
        true,
        Some((0, Residual::None)),
    )
}

#[divan::bench(args = [48, 4096, 65536, 262144])]
fn crc32c_digest(bencher: Bencher, len: usize) {
    let data = vec![0xa5u8; len];
    bencher
        .counter(divan::counter::BytesCount::new(len))
        .bench(|| crc32c(black_box(&data)));
}
