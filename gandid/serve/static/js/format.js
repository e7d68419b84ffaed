// Numbers as the views print them, and the value formats of the analyses' descriptions (docs/serve.md).

export function isNum(x) {
  return typeof x === "number" && Number.isFinite(x);
}

/** A number with fixed decimals, never "-0.00". */
export function fixed(x, digits = 2, signed = false) {
  if (!isNum(x)) return "—";
  let s = x.toFixed(digits);
  if (Number(s) === 0) return (0).toFixed(digits);
  if (signed && x > 0) s = "+" + s;
  return s;
}

/** A change in a fraction of image pixels, in percentage points: 0.0123 -> "+1.23 pp". */
export function pp(x, digits = 2, signed = true) {
  return isNum(x) ? fixed(100 * x, digits, signed) + "\u00a0pp" : "—";
}

/** A fraction as a percentage: 0.423 -> "42.3%". */
export function pct(x, digits = 1) {
  return isNum(x) ? fixed(100 * x, digits) + "%" : "—";
}

export function interval(ci, fmt) {
  return Array.isArray(ci) && ci.length === 2 ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "—";
}

/** A p or q value: three significant digits, small ones in exponent form. */
export function pval(x) {
  if (!isNum(x)) return "—";
  return x < 0.001 ? x.toExponential(1) : x.toPrecision(2);
}

// formats whose values line up to the right in a table
const NUMERIC = new Set(["number", "int", "pp", "pct", "times", "p"]);

export function isNumeric(spec) {
  return NUMERIC.has((spec && spec.format) || "number");
}

/**
 * A value of a description as text. spec: {format, digits, signed}, format one of number (default), int,
 * pp, pct, times, p, check, yesno, text. null is "—", a string is shown as it is, [lo, hi] is an interval.
 */
export function show(value, spec = {}) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value;
  if (Array.isArray(value)) return interval(value, (v) => show(v, spec));
  const digits = Number.isInteger(spec.digits) ? spec.digits : undefined;
  switch (spec.format) {
    case "pp": return pp(value, digits ?? 2, spec.signed ?? true);
    case "pct": return pct(value, digits ?? 1);
    case "times": return isNum(value) ? `×${fixed(value, digits ?? 1)}` : "—";
    case "p": return pval(value);
    case "int": return isNum(value) ? String(Math.round(value)) : "—";
    case "check": return value ? "✓" : "";
    case "yesno": return value ? "yes" : "no";
    case "text": return String(value);
    default:
      if (typeof value === "boolean") return value ? "yes" : "no";
      return fixed(value, digits ?? 2, spec.signed ?? false);
  }
}

/** A description's message with {name} replaced from vars (unknown names are left as they are). */
export function fill(template, vars) {
  return String(template ?? "").replace(/\{(\w+)\}/g, (whole, key) => (key in vars ? String(vars[key]) : whole));
}
