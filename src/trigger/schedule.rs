//! `schedule:` entries: POSIX cron as GitHub reads it (5 fields; day of week 0–7 with 0 and 7 Sunday, so
//! `1-5` is Monday to Friday), in UTC or an IANA time zone.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// One checked schedule entry.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub cron: String,
    pub timezone: String,
    parsed: Cron,
    tz: TimeZone,
}

/// What is wrong with a cron or time zone, and a hint.
#[derive(Debug, PartialEq, Eq)]
pub struct ScheduleError {
    pub message: String,
    pub hint: Option<String>,
}

const FIELDS: [(&str, &str); 5] = [
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or JAN-DEC"),
    ("day of week", "0-7 or SUN-SAT, 0 and 7 are Sunday"),
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// The IANA time zone `name`, or why it is not one.
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|_| ScheduleError {
        message: format!("`{name}` is not a time zone"),
        hint: Some("use an IANA name such as `Europe/Berlin` or `America/New_York`".to_owned()),
    })
}

impl Schedule {
    pub fn parse(cron: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let err = |message: String, hint: &str| ScheduleError {
            message,
            hint: Some(hint.to_owned()),
        };
        if cron.trim_start().starts_with('@') {
            return Err(err(
                format!("`{cron}` is a cron macro, which GitHub's schedules do not support"),
                "write the five fields, e.g. `0 0 * * *` for @daily",
            ));
        }
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(
                format!("cron `{cron}` has {} fields; it needs 5", fields.len()),
                "minute hour day-of-month month day-of-week, e.g. `30 5 * * 1-5` (no seconds field)",
            ));
        }
        let parsed = match parser().parse(cron) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Find the field at fault by trying each alone.
                for (i, (name, range)) in FIELDS.iter().enumerate() {
                    let mut probe = ["*"; 5];
                    probe[i] = fields[i];
                    if parser().parse(&probe.join(" ")).is_err() {
                        return Err(err(
                            format!(
                                "cron `{cron}`: field {} ({name}) `{}` is not valid",
                                i + 1,
                                fields[i]
                            ),
                            &format!("the {name} takes {range}, with `*`, `,`, `-` and `/`"),
                        ));
                    }
                }
                return Err(err(
                    format!("cron `{cron}` is not valid: {e}"),
                    "check the five fields",
                ));
            }
        };
        let tz_name = timezone.unwrap_or("UTC");
        let tz = time_zone(tz_name)?;
        Ok(Schedule {
            cron: cron.to_owned(),
            timezone: tz_name.to_owned(),
            parsed,
            tz,
        })
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(self.tz.clone());
        self.parsed
            .find_next_occurrence(&start, false)
            .ok()
            .map(|z: Zoned| z.timestamp())
    }

    /// The latest tick in `(after, now]`, if any: after downtime, the missed ticks fire once, not once each.
    pub fn due(&self, after: Timestamp, now: Timestamp) -> Option<Timestamp> {
        let next = self.next_after(after)?;
        if next > now {
            return None;
        }
        let latest = self
            .parsed
            .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
            .ok()
            .map(|z: Zoned| z.timestamp())
            .unwrap_or(next);
        Some(latest.max(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn one_to_five_is_monday_to_friday() {
        let s = Schedule::parse("0 9 * * 1-5", None).unwrap();
        // Saturday 2026-11-21: the next tick is Monday 2026-11-23 09:00 UTC.
        let mut t = at("2026-11-21T00:00:00Z");
        let mut days = Vec::new();
        for _ in 0..5 {
            t = s.next_after(t).unwrap();
            days.push(format!("{:?}", t.to_zoned(TimeZone::UTC).weekday()));
        }
        assert_eq!(
            days,
            ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
        );
        assert_eq!(
            s.next_after(t).unwrap(),
            at("2026-11-30T09:00:00Z"),
            "then next Monday"
        );
    }

    #[test]
    fn zero_and_seven_are_sunday() {
        for cron in ["0 12 * * 0", "0 12 * * 7", "0 12 * * SUN"] {
            let s = Schedule::parse(cron, None).unwrap();
            let t = s.next_after(at("2026-11-24T00:00:00Z")).unwrap();
            assert_eq!(t, at("2026-11-29T12:00:00Z"), "{cron}");
        }
    }

    #[test]
    fn time_zones_shift_the_tick() {
        let s = Schedule::parse("0 3 * * *", Some("Europe/Berlin")).unwrap();
        // 00:00 UTC is 01:00 in Berlin (CET, UTC+1): the day's 03:00 is 02:00 UTC.
        assert_eq!(
            s.next_after(at("2026-11-24T00:00:00Z")).unwrap(),
            at("2026-11-24T02:00:00Z")
        );
        let summer = s.next_after(at("2026-07-01T00:00:00Z")).unwrap();
        assert_eq!(summer, at("2026-07-01T01:00:00Z"), "summer time is UTC+2");
    }

    #[test]
    fn missed_ticks_fire_once() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let due = s
            .due(at("2026-11-24T00:00:00Z"), at("2026-11-24T01:02:00Z"))
            .unwrap();
        assert_eq!(
            due,
            at("2026-11-24T01:00:00Z"),
            "the latest missed tick, once"
        );
        assert_eq!(
            s.due(at("2026-11-24T01:00:00Z"), at("2026-11-24T01:04:59Z")),
            None
        );
    }

    #[test]
    fn bad_crons_name_the_field() {
        let e = Schedule::parse("0 25 * * *", None).unwrap_err();
        assert_eq!(
            e.message,
            "cron `0 25 * * *`: field 2 (hour) `25` is not valid"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("the hour takes 0-23, with `*`, `,`, `-` and `/`")
        );
        assert!(
            Schedule::parse("0 0 9 * * 1", None)
                .unwrap_err()
                .message
                .contains("has 6 fields")
        );
        assert!(
            Schedule::parse("@daily", None)
                .unwrap_err()
                .message
                .contains("macro")
        );
        assert!(Schedule::parse("0 0 * * MON-FRI", None).is_ok());
        let e = Schedule::parse("0 0 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(e.message.contains("not a time zone"));
    }
}
