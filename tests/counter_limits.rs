//! Counter tests, chapter 2: settings and readings. 1.7 `set_max` / `swap_max`, 1.8
//! `set_min` / `set_low` / `set_high`, 1.9 peaks, their resets and watchers, 1.10
//! `parse_amount`.
//!
//! Black-box tests of [`chargetree::counter`], one group per rule of Linux's
//! `mm/page_counter.c` *as the library implements it*, numbered like the sections of that
//! behaviour (1.1 data model … 1.14 bad input) across the chapters `counter_charging.rs`
//! (1.1, 1.3–1.6, 1.14), `counter_limits.rs` (1.7–1.10), `counter_protection.rs` (1.2, 1.11)
//! and `counter_invariants.rs` (1.13); their helpers are in `support/counter.rs`. Where the
//! library deliberately differs from Linux (module docs of `src/counter/mod.rs`), the tests
//! pin the library's behaviour and say what Linux would do instead.
//!
//! Trees are built on the stack (`with_tree`, `fixture`), so nothing leaks and the file runs
//! under miri with strict provenance (the long loops shrink there).

mod support;

use support::counter::*;

use core::pin::{Pin, pin};
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use chargetree::counter::{
    COUNTER_MAX, Counter, LimitError, ParseError, PeakWatcher, SET_MAX_RETRIES, parse_amount,
};

// ---------------------------------------------------------------------------------------------
// 1.7 set_max / swap_max
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_7_set_max_is_busy_below_usage_and_changes_nothing() {
    fixture(|fx| {
        // b's hierarchical usage is 33 (3 local + 10 + 20).
        let before = fx.snaps();
        assert_eq!(fx.b.set_max(32), Err(LimitError::Busy { usage: 33, limit: 32 }));
        assert_eq!(fx.b.set_max(0), Err(LimitError::Busy { usage: 33, limit: 0 }));
        assert_eq!(fx.snaps(), before);
        assert_eq!(fx.b.max(), COUNTER_MAX);
        fx.assert_balanced(LOCALS);
        // Exactly the usage is accepted; then nothing more fits.
        assert_eq!(fx.b.set_max(33), Ok(()));
        assert_eq!(fx.b.max(), 33);
        assert_limit(fx.d.try_charge(1), fx.b, 1);
        assert_eq!(
            LimitError::Busy { usage: 33, limit: 32 }.to_string(),
            "usage 33 is above the requested limit 32"
        );
    });
}

#[test]
fn rule_1_7_raising_the_limit_always_succeeds() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.try_charge(10).unwrap();
    assert_eq!(c.set_max(11), Ok(()));
    assert_eq!(c.set_max(COUNTER_MAX), Ok(()));
    // Usage above the current limit (forced): raising is fine, lowering below usage is not.
    c.set_max(10).unwrap();
    c.charge(5).unwrap();
    assert_eq!(c.usage(), 15);
    assert_eq!(c.set_max(14), Err(LimitError::Busy { usage: 15, limit: 14 }));
    assert_eq!(c.max(), 10);
    assert_eq!(c.set_max(12), Err(LimitError::Busy { usage: 15, limit: 12 }));
    assert_eq!(c.set_max(20), Ok(()));
    assert_eq!(c.max(), 20);
    // Bounded retries: the library gives up after a fixed number instead of looping forever.
    assert_eq!(SET_MAX_RETRIES, 64);
}

#[test]
fn rule_1_7_swap_max_installs_unconditionally() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.try_charge(10).unwrap();
    assert_eq!(c.swap_max(3), Ok(COUNTER_MAX));
    assert_eq!((c.max(), c.usage(), c.margin()), (3, 10, 0));
    assert_limit(c.try_charge(1), &c, 0);
    c.uncharge(7);
    assert_limit(c.try_charge(1), &c, 0); // 3 + 1 > 3
    c.uncharge(1);
    assert!(c.try_charge(1).is_ok());
    assert_eq!(c.swap_max(0), Ok(3));
    assert_eq!(c.swap_max(COUNTER_MAX + 1), Err(LimitError::TooLarge { value: COUNTER_MAX + 1 }));
    assert_eq!((c.max(), c.usage()), (0, 3));
    assert_balanced(&root, 0, &[&c]);
}

/// Protocol L: once `set_max(L)` returns `Ok`, no charge can succeed above `L`. Chargers only
/// ever add (one unit per charge), the setter raises the limit, lets usage grow, then lowers
/// it to just above the usage it read. After every successful lowering the usage may exceed
/// `L` only by the speculative adds in flight (one unit per charger thread).
#[test]
fn rule_1_7_set_max_under_racing_chargers_never_lets_usage_past_an_installed_limit() {
    const CHARGERS: usize = 3;
    let root = Counter::new_root();
    let child = Counter::new(Some(&root));
    let stop = AtomicBool::new(false);
    let (mut ok, mut busy) = (0usize, 0usize);
    thread::scope(|s| {
        for _ in 0..CHARGERS {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = child.try_charge(1);
                }
            });
        }
        for _ in 0..scaled(2000) {
            root.set_max(COUNTER_MAX).unwrap();
            for _ in 0..50 {
                core::hint::spin_loop();
            }
            let target = root.usage() + 256;
            match root.set_max(target) {
                Ok(()) => {
                    ok += 1;
                    assert_eq!(root.max(), target);
                    let seen = root.usage();
                    assert!(seen <= target + CHARGERS, "usage {seen} above installed limit {target}");
                }
                Err(LimitError::Busy { limit, .. }) => {
                    assert_eq!(limit, target);
                    busy += 1;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        // End with a lowering that the chargers race against until they stop.
        loop {
            let target = root.usage() + 16;
            if root.set_max(target).is_ok() {
                break;
            }
        }
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ok > 0, "no lowering ever succeeded ({busy} busy)");
    assert!(root.usage() <= root.max(), "{root:?}");
    assert_eq!(child.usage(), root.usage());
}

// ---------------------------------------------------------------------------------------------
// 1.8 set_min / set_low / set_high
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_8_min_low_high_accept_values_above_max_and_each_other() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.try_charge(6).unwrap();
    assert_eq!(c.set_min(100), Ok(()));
    assert_eq!(c.set_low(1000), Ok(()));
    assert_eq!(c.set_high(50), Ok(()));
    assert_eq!((c.min(), c.low(), c.high(), c.max()), (100, 1000, 50, 10));
    // Only min(usage, declared) counts.
    assert_eq!((c.min_usage(), c.low_usage()), (6, 6));
    // min > low is accepted too.
    c.set_min(30).unwrap();
    c.set_low(20).unwrap();
    assert_eq!((c.min(), c.low()), (30, 20));
    // high is not enforced by the counter, even below the usage.
    assert_eq!(c.set_high(0), Ok(()));
    assert!(c.try_charge(4).is_ok());
    assert_eq!((c.usage(), c.high(), c.failcnt()), (10, 0, 0));
    // COUNTER_MAX itself is representable for every setting.
    for set in [Counter::set_max, Counter::set_high, Counter::set_min, Counter::set_low] {
        assert_eq!(set(&c, COUNTER_MAX), Ok(()));
    }
    assert_eq!((c.min(), c.low(), c.high(), c.max()), (COUNTER_MAX, COUNTER_MAX, COUNTER_MAX, COUNTER_MAX));
    assert_balanced(&root, 0, &[&c]);
}

#[test]
fn bad_input_settings_above_counter_max_are_too_large_and_change_nothing() {
    fixture(|fx| {
        let before = fx.snaps();
        for value in [COUNTER_MAX + 1, usize::MAX / 2, usize::MAX - 1] {
            for node in fx.nodes() {
                let expected = Err(LimitError::TooLarge { value });
                assert_eq!(node.set_max(value), expected);
                assert_eq!(node.set_high(value), expected);
                assert_eq!(node.set_min(value), expected);
                assert_eq!(node.set_low(value), expected);
                assert_eq!(node.swap_max(value), Err(LimitError::TooLarge { value }));
            }
        }
        assert_eq!(fx.snaps(), before);
        fx.assert_balanced(LOCALS);
        assert!(LimitError::TooLarge { value: usize::MAX }.to_string().contains("above the counter maximum"));
    });
}

/// `usize::MAX` is "no limit" for every setting (as cgroupfs accepts `max`): stored as
/// `COUNTER_MAX`, never refused.
#[test]
fn usize_max_means_no_limit_for_every_setting() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.set_max(10).unwrap();
    c.set_max(usize::MAX).unwrap();
    assert_eq!(c.max(), COUNTER_MAX);
    c.set_high(usize::MAX).unwrap();
    c.set_min(usize::MAX).unwrap();
    c.set_low(usize::MAX).unwrap();
    assert_eq!((c.high(), c.min(), c.low()), (COUNTER_MAX, COUNTER_MAX, COUNTER_MAX));
    assert_eq!(c.swap_max(usize::MAX), Ok(COUNTER_MAX));
    c.try_charge(1 << 40).unwrap();
    assert_eq!(root.children_min_usage(), 1 << 40, "protected up to COUNTER_MAX");
    c.uncharge(1 << 40);
}

// ---------------------------------------------------------------------------------------------
// 1.9 Peaks and their resets
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_9_reset_peak_restarts_global_and_local_peak_from_usage() {
    let root = Counter::new_root();
    let c = Counter::new(Some(&root));
    c.charge(10).unwrap();
    c.uncharge(8);
    assert_eq!((c.peak(), c.local_peak()), (10, 10));
    c.reset_peak();
    assert_eq!((c.peak(), c.local_peak(), c.usage()), (2, 2, 2));
    // The parent's peak is its own.
    assert_eq!(root.peak(), 10);
    c.charge(3).unwrap();
    assert_eq!((c.peak(), c.local_peak()), (5, 5));
    c.uncharge(5);
    c.reset_peak();
    assert_eq!((c.peak(), c.local_peak()), (0, 0));
    assert_eq!(root.peak(), 10);
}

#[test]
fn rule_1_9_watchers_see_the_peak_since_their_own_reset() {
    let c = Counter::new_root();
    let a = pin!(PeakWatcher::new(&c));
    let b = pin!(PeakWatcher::new(&c));
    let never = pin!(PeakWatcher::new(&c));
    assert!(ptr::eq(a.counter(), &c));
    c.charge(10).unwrap();
    a.as_ref().reset(); // a's window starts at 10
    c.uncharge(8);
    b.as_ref().reset(); // b's window starts at 2; a keeps its 10
    c.charge(3).unwrap(); // usage 5
    assert_eq!((a.read(), b.read(), c.peak(), c.local_peak()), (10, 5, 10, 5));
    // A watcher that never reset reads the global peak, whatever the others did.
    assert_eq!(never.read(), 10);

    a.as_ref().reset(); // a: 5; b keeps max(5, 5)
    c.charge(1).unwrap(); // 6
    c.uncharge(6); // 0
    assert_eq!((a.read(), b.read(), never.read()), (6, 6, 10));

    // A global reset ends everybody's shared window; watchers keep what they saw.
    c.charge(4).unwrap();
    c.reset_peak(); // usage 4
    assert_eq!((c.peak(), c.local_peak()), (4, 4));
    assert_eq!((a.read(), b.read(), never.read()), (6, 6, 4));
    b.as_ref().reset();
    c.uncharge(4);
    assert_eq!((a.read(), b.read(), never.read()), (6, 4, 4));
}

type BoxedWatcher<'c, 'p> = Pin<Box<PeakWatcher<'c, 'p>>>;

fn reads(w: &[Option<BoxedWatcher<'_, '_>>; 3]) -> [Option<usize>; 3] {
    w.each_ref().map(|w| w.as_ref().map(|w| w.read()))
}

#[test]
fn rule_1_9_watchers_can_be_dropped_in_any_order() {
    for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]] {
        let c = Counter::new_root();
        let mut w: [Option<BoxedWatcher<'_, '_>>; 3] =
            core::array::from_fn(|_| Some(Box::pin(PeakWatcher::new(&c))));
        // Register all three with different windows: w0 from 10, w1 from 5, w2 from 6.
        c.charge(10).unwrap();
        w[0].as_ref().unwrap().as_ref().reset();
        c.uncharge(5);
        w[1].as_ref().unwrap().as_ref().reset();
        c.charge(1).unwrap();
        w[2].as_ref().unwrap().as_ref().reset();
        assert_eq!(reads(&w), [Some(10), Some(6), Some(6)]);

        let mut peak_so_far = [10, 6, 6];
        for (step, &gone) in order.iter().enumerate() {
            drop(w[gone].take());
            // The remaining list must still be intact: a reset by a survivor (or a global
            // reset when none is left) folds the ended window into every other survivor.
            c.charge(20 + step).unwrap();
            let usage = c.usage();
            for p in &mut peak_so_far {
                *p = (*p).max(usage);
            }
            match w.iter().position(Option::is_some) {
                Some(i) => {
                    c.uncharge(20 + step);
                    w[i].as_ref().unwrap().as_ref().reset();
                    peak_so_far[i] = c.usage();
                }
                None => {
                    c.uncharge(20 + step);
                    c.reset_peak();
                    assert_eq!(c.peak(), c.usage());
                }
            }
            let expected: Vec<Option<usize>> =
                w.iter().zip(peak_so_far).map(|(w, p)| w.as_ref().map(|_| p)).collect();
            assert_eq!(reads(&w).to_vec(), expected, "order {order:?} step {step}");
        }
        // A fresh watcher registers on the emptied list.
        let fresh = pin!(PeakWatcher::new(&c));
        fresh.as_ref().reset();
        c.charge(2).unwrap();
        assert_eq!(fresh.read(), c.usage());
    }
}

#[test]
fn rule_1_9_a_watcher_may_reset_many_times() {
    let c = Counter::new_root();
    let a = pin!(PeakWatcher::new(&c));
    let b = pin!(PeakWatcher::new(&c));
    for i in 1..=5 {
        c.charge(i).unwrap();
        a.as_ref().reset();
        a.as_ref().reset(); // registering twice would corrupt the list
        b.as_ref().reset();
        assert_eq!((a.read(), b.read()), (c.usage(), c.usage()));
    }
    c.charge(100).unwrap();
    c.uncharge(100);
    assert_eq!((a.read(), b.read()), (115, 115));
    a.as_ref().reset();
    assert_eq!((a.read(), b.read()), (15, 115));
}

// ---------------------------------------------------------------------------------------------
// 1.10 parse_amount (memparse)
// ---------------------------------------------------------------------------------------------

#[test]
fn rule_1_10_parse_max_token() {
    for unit in [1, 4096, usize::MAX] {
        assert_eq!(parse_amount("max", unit), Ok(COUNTER_MAX));
        assert_eq!(parse_amount(" max\n", unit), Ok(COUNTER_MAX));
    }
    // The token is exact and case-sensitive; v1's "-1" is not accepted.
    assert_eq!(parse_amount("MAX", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("Max", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("maxx", 4096), Err(ParseError::InvalidDigit { at: 0 }));
    assert_eq!(parse_amount("-1", 4096), Err(ParseError::InvalidDigit { at: 0 }));
}

#[test]
fn rule_1_10_parse_binary_suffixes_in_both_cases() {
    let suffixes = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50), ('E', 60)];
    for (suffix, shift) in suffixes {
        let expected = ((7u64 << shift) / 4096) as usize;
        for s in [suffix, suffix.to_ascii_lowercase()] {
            assert_eq!(parse_amount(&format!("7{s}"), 4096), Ok(expected), "7{s}");
        }
        assert_eq!(parse_amount(&format!("1{suffix}"), 1 << 10), Ok(1 << (shift - 10)));
    }
    assert_eq!(parse_amount("512M", 4096), Ok(512 * M));
    assert_eq!(parse_amount("1g", 1), Ok(1 << 30));
    assert_eq!(parse_amount("0E", 1), Ok(0));
}

#[test]
fn rule_1_10_parse_decimal_and_hex() {
    assert_eq!(parse_amount("0", 1), Ok(0));
    assert_eq!(parse_amount("12345", 1), Ok(12345));
    // Leading zeros are decimal, not octal.
    assert_eq!(parse_amount("0755", 1), Ok(755));
    assert_eq!(parse_amount("0x10", 1), Ok(16));
    assert_eq!(parse_amount("0X1f", 1), Ok(31));
    assert_eq!(parse_amount("0xFF", 1), Ok(255));
    assert_eq!(parse_amount("0x1000", 4096), Ok(1));
    assert_eq!(parse_amount("0x10K", 1), Ok(16 << 10));
    assert_eq!(parse_amount("0x1P", 1 << 10), Ok(1 << 40));
    // In hex, E is a digit, not the exa suffix.
    assert_eq!(parse_amount("0x1E", 1), Ok(0x1E));
    assert_eq!(parse_amount("0x1e", 1), Ok(0x1E));
}

#[test]
fn rule_1_10_parse_ignores_surrounding_whitespace() {
    assert_eq!(parse_amount("  4096\t\n", 4096), Ok(1));
    assert_eq!(parse_amount(" 1g\n", 1), Ok(1 << 30));
    assert_eq!(parse_amount("\n0x10\n", 1), Ok(16));
    // Offsets are into the trimmed input.
    assert_eq!(parse_amount("   12x ", 1), Err(ParseError::InvalidDigit { at: 2 }));
    assert_eq!(parse_amount("1 K", 1), Err(ParseError::InvalidDigit { at: 1 }));
}

#[test]
fn rule_1_10_parse_truncates_to_whole_units() {
    assert_eq!(parse_amount("4095", 4096), Ok(0));
    assert_eq!(parse_amount("4096", 4096), Ok(1));
    assert_eq!(parse_amount("8191", 4096), Ok(1));
    assert_eq!(parse_amount("1K", 4096), Ok(0));
    assert_eq!(parse_amount("4K", 4096), Ok(1));
    assert_eq!(parse_amount("7K", 4096), Ok(1));
    assert_eq!(parse_amount("10", 3), Ok(3));
    assert_eq!(parse_amount("1E", usize::MAX), Ok(0));
}

#[test]
fn bad_input_garbage_amount_strings_report_kind_and_offset() {
    use ParseError::{Empty, InvalidDigit};
    let cases: &[(&str, ParseError)] = &[
        ("", Empty),
        (" \t\n", Empty),
        ("abc", InvalidDigit { at: 0 }),
        ("K", InvalidDigit { at: 0 }),
        ("+5", InvalidDigit { at: 0 }),
        ("-0", InvalidDigit { at: 0 }),
        ("12Q", InvalidDigit { at: 2 }),
        ("1KB", InvalidDigit { at: 2 }),
        ("1kk", InvalidDigit { at: 2 }),
        ("1.5G", InvalidDigit { at: 1 }),
        ("1e5", InvalidDigit { at: 2 }), // "1E" then a stray digit: no scientific notation
        ("10 000", InvalidDigit { at: 2 }),
        ("0x", InvalidDigit { at: 1 }),
        ("0xg", InvalidDigit { at: 2 }),
        ("0x1Z", InvalidDigit { at: 3 }),
        ("0x10KK", InvalidDigit { at: 5 }),
        ("1\u{e9}", InvalidDigit { at: 1 }),
        ("\u{663}", InvalidDigit { at: 0 }), // ARABIC-INDIC DIGIT THREE is not a digit here
        ("12\u{0}", InvalidDigit { at: 2 }),
    ];
    for &(input, expected) in cases {
        assert_eq!(parse_amount(input, 4096), Err(expected), "{input:?}");
        assert_eq!(parse_amount(input, 1), Err(expected), "{input:?}");
    }
    assert_eq!(ParseError::InvalidDigit { at: 2 }.to_string(), "invalid character at byte 2");
    // A rejected string never reaches a limit write: the fixture's limits and balances are
    // exactly as before.
    fixture(|fx| {
        for &(input, _) in cases {
            if let Ok(limit) = parse_amount(input, 1) {
                fx.b.set_max(limit).unwrap();
            }
        }
        assert_eq!(fx.b.max(), COUNTER_MAX);
        fx.assert_balanced(LOCALS);
    });
}

#[test]
fn bad_input_too_large_amounts_are_errors_not_clamped() {
    use ParseError::TooLarge;
    // Does not fit 64 bits at all (Linux would clamp to "max").
    assert_eq!(parse_amount("18446744073709551616", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("0x10000000000000000", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("99999999999999999999999", 4096), Err(TooLarge));
    assert_eq!(parse_amount("16E", usize::MAX), Err(TooLarge));
    assert_eq!(parse_amount("17179869184G", usize::MAX), Err(TooLarge)); // 2^64
    // 15 EiB fits 64 bits; in 8 KiB units it fits the counter, in 4 KiB units it does not
    // (15 * 2^48 > 2^51 - 1); 7 EiB in 4 KiB pages is the largest whole-EiB amount that does.
    assert_eq!(parse_amount("15E", 8192), Ok(15 << 47));
    assert_eq!(parse_amount("15E", 4096), Err(TooLarge));
    assert_eq!(parse_amount("8E", 4096), Err(TooLarge));
    assert_eq!(parse_amount("7E", 4096), Ok(7 << 48));
    // Fits 64 bits but not the counter.
    assert_eq!(parse_amount("1E", 1), Err(TooLarge));
    assert_eq!(parse_amount(&format!("{COUNTER_MAX}"), 1), Ok(COUNTER_MAX));
    assert_eq!(parse_amount(&format!("{}", COUNTER_MAX as u64 + 1), 1), Err(TooLarge));
    assert!(TooLarge.to_string().contains("above the counter maximum"));
}

#[test]
#[cfg(target_pointer_width = "64")]
fn bad_input_too_large_amount_boundaries_in_pages() {
    use ParseError::TooLarge;
    let top = COUNTER_MAX as u64 * 4096;
    assert_eq!(parse_amount(&format!("{}", top + 4095), 4096), Ok(COUNTER_MAX));
    assert_eq!(parse_amount(&format!("{}", top + 4096), 4096), Err(TooLarge));
    assert_eq!(parse_amount("18446744073709551615", 4096), Err(TooLarge));
    // u64::MAX bytes in 8 KiB units is exactly 2^51 - 1 = COUNTER_MAX.
    assert_eq!(parse_amount("18446744073709551615", 8192), Ok(COUNTER_MAX));
    // (2^34 - 1) GiB in 8 KiB units = 2^51 - 2^17.
    assert_eq!(parse_amount("17179869183G", 8192), Ok((1 << 51) - (1 << 17)));
}

#[test]
fn bad_input_zero_unit() {
    for input in ["4096", "max", "", "garbage", "99999999999999999999999"] {
        assert_eq!(parse_amount(input, 0), Err(ParseError::ZeroUnit), "{input:?}");
    }
    assert_eq!(ParseError::ZeroUnit.to_string(), "unit size must be at least one byte");
}
