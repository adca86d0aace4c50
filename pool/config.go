package pool

import (
	"fmt"
	"strings"
	"time"

	"github.com/kpool/kpool/events"
)

// Limits that keep a single pool's work bounded.
const (
	MaxTarget  = 100_000
	MaxHardCap = 1_000_000
)

// WithPolicy returns c with every field the policy gives replaced by its value.
func (c Config) WithPolicy(p events.Policy) Config {
	setInt(&c.Target, p.Target)
	setInt(&c.LowWatermark, p.LowWatermark)
	setInt(&c.HardCap, p.HardCap)
	setDur(&c.Lifetime, p.Lifetime)
	setDur(&c.NotBeforeBackdate, p.NotBeforeBackdate)
	setDur(&c.MaxLifetime, p.MaxLifetime)
	setDur(&c.ExpiryMargin, p.ExpiryMargin)
	setDur(&c.DeleteGrace, p.DeleteGrace)
	setDur(&c.UploadTimeout, p.UploadTimeout)
	setInt(&c.MaxUploadAttempts, p.MaxUploadAttempts)
	setDur(&c.TombstoneRetention, p.TombstoneRetention)
	setDur(&c.DeleteAlertAfter, p.DeleteAlertAfter)
	return c
}

// Policy writes every field of c as a policy: the policy in force, all fields given.
func (c Config) Policy() events.Policy {
	d := func(v time.Duration) *events.Duration { x := events.Duration(v); return &x }
	return events.Policy{
		Target: &c.Target, LowWatermark: &c.LowWatermark, HardCap: &c.HardCap,
		Lifetime: d(c.Lifetime), NotBeforeBackdate: d(c.NotBeforeBackdate), MaxLifetime: d(c.MaxLifetime),
		ExpiryMargin: d(c.ExpiryMargin), DeleteGrace: d(c.DeleteGrace), UploadTimeout: d(c.UploadTimeout),
		MaxUploadAttempts: &c.MaxUploadAttempts, TombstoneRetention: d(c.TombstoneRetention),
	}
}

// Changed names the fields (by their JSON names) whose values differ between a and b.
func Changed(a, b Config) []string {
	var names []string
	add := func(name string, differ bool) {
		if differ {
			names = append(names, name)
		}
	}
	add("target", a.Target != b.Target)
	add("low_watermark", a.LowWatermark != b.LowWatermark)
	add("hard_cap", a.HardCap != b.HardCap)
	add("lifetime", a.Lifetime != b.Lifetime)
	add("not_before_backdate", a.NotBeforeBackdate != b.NotBeforeBackdate)
	add("max_lifetime", a.MaxLifetime != b.MaxLifetime)
	add("expiry_margin", a.ExpiryMargin != b.ExpiryMargin)
	add("delete_grace", a.DeleteGrace != b.DeleteGrace)
	add("upload_timeout", a.UploadTimeout != b.UploadTimeout)
	add("max_upload_attempts", a.MaxUploadAttempts != b.MaxUploadAttempts)
	add("tombstone_retention", a.TombstoneRetention != b.TombstoneRetention)
	add("delete_alert_after", a.DeleteAlertAfter != b.DeleteAlertAfter)
	return names
}

// Effective is the configuration a pool registered with policy gets on this core: the
// worker's Defaults (DefaultConfig when the Core has none), then the pool's policy.
func (c *Core) Effective(policy events.Policy) Config {
	base := c.Defaults
	if base == (Config{}) {
		base = DefaultConfig()
	}
	return base.WithPolicy(policy)
}

func setInt(dst *int, v *int) {
	if v != nil {
		*dst = *v
	}
}

func setDur(dst *time.Duration, v *events.Duration) {
	if v != nil {
		*dst = time.Duration(*v)
	}
}

// Validate lists every problem with a configuration, or returns nil.
func (c Config) Validate() error {
	var bad []string
	add := func(format string, a ...any) { bad = append(bad, fmt.Sprintf(format, a...)) }
	if c.Target < 1 || c.Target > MaxTarget {
		add("target %d must be between 1 and %d", c.Target, MaxTarget)
	}
	if c.LowWatermark < 0 || c.LowWatermark > c.Target {
		add("low_watermark %d must be between 0 and target %d", c.LowWatermark, c.Target)
	}
	if c.HardCap < c.Target || c.HardCap > MaxHardCap {
		add("hard_cap %d must be at least target %d and at most %d", c.HardCap, c.Target, MaxHardCap)
	}
	if c.Lifetime <= 0 {
		add("lifetime %s must be positive", human(c.Lifetime))
	}
	if c.NotBeforeBackdate < time.Second {
		add("not_before_backdate %s must be at least 1s: OpenMLS refuses a KeyPackage at exactly not_before", human(c.NotBeforeBackdate))
	}
	if c.MaxLifetime < c.Lifetime+c.NotBeforeBackdate {
		add("max_lifetime %s is shorter than lifetime %s + not_before_backdate %s: generated KeyPackages would be refused", human(c.MaxLifetime), human(c.Lifetime), human(c.NotBeforeBackdate))
	}
	if c.ExpiryMargin < time.Second || 2*c.ExpiryMargin >= c.Lifetime {
		add("expiry_margin %s must be at least 1s (OpenMLS refuses a KeyPackage at not_after: kpool never offers one in its last second) and less than half the lifetime %s (a KeyPackage must be fresh for a while)", human(c.ExpiryMargin), human(c.Lifetime))
	}
	if c.DeleteGrace < 0 {
		add("delete_grace %s must not be negative", human(c.DeleteGrace))
	}
	if c.UploadTimeout <= 0 {
		add("upload_timeout %s must be positive", human(c.UploadTimeout))
	} else if c.Lifetime > 0 && c.ExpiryMargin >= time.Second && 2*c.ExpiryMargin < c.Lifetime && c.UploadTimeout >= c.Lifetime-2*c.ExpiryMargin {
		add("upload_timeout %s must be shorter than lifetime − 2×expiry_margin (%s)", human(c.UploadTimeout), human(c.Lifetime-2*c.ExpiryMargin))
	}
	if c.MaxUploadAttempts < 1 {
		add("max_upload_attempts %d must be at least 1", c.MaxUploadAttempts)
	}
	if c.DeleteAlertAfter < 0 {
		add("delete_alert_after %s must not be negative", human(c.DeleteAlertAfter))
	}
	if c.TombstoneRetention <= 0 {
		add("tombstone_retention %s must be positive (a tombstone recognises late duplicates)", human(c.TombstoneRetention))
	}
	if bad == nil {
		return nil
	}
	return &ConfigError{Problems: bad}
}

// ConfigError lists what is wrong with a pool configuration.
type ConfigError struct{ Problems []string }

func (e *ConfigError) Error() string { return "invalid pool config: " + strings.Join(e.Problems, "; ") }

// bucketWidth is the precision of Status.NextExpiry: the roundest width of at least
// max_lifetime/192. Live KeyPackages expire within max_lifetime of now, so a pool record never
// holds more than about 193 buckets, whatever the pool size.
func bucketWidth(c Config) int64 {
	// round widths, so bucket starts fall on whole hours or days (UTC)
	for _, w := range []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour, 24 * time.Hour} {
		if w*192 >= c.MaxLifetime {
			return int64(w / time.Second)
		}
	}
	return int64((c.MaxLifetime/192)/time.Hour+1) * 3600
}
