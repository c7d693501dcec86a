// The sampling rule of tgc/generate.py::sample, in float64 like numpy.
//
// temperature 0: argmax (ties to the lowest id). Otherwise logits / temperature, then
// top-k (keep x >= the k-th largest), then top-p (the smallest most-likely prefix whose
// mass reaches p, stable order), and the token is the inverse CDF in token-id order at
// u * cdf[last] (side "right"), u from the host RNG's "sample" stream.
// Leaves out: numpy's pairwise summation (sums here are sequential: the two differ by an
// ulp or so of the total, which moves a draw only when u lands within ~1e-16 of a boundary).

export function sample(logits, temperature, topK, topP, u) {
  const n = logits.length;
  const x = Float64Array.from(logits);
  if (!(temperature > 0)) {
    let best = 0;
    for (let i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
  }
  for (let i = 0; i < n; i++) x[i] /= temperature;
  const keep = new Uint8Array(n).fill(1);
  if (topK && topK > 0 && topK < n) {
    const sorted = Float64Array.from(x).sort();
    const kth = sorted[n - topK];
    for (let i = 0; i < n; i++) keep[i] = x[i] >= kth ? 1 : 0;
  }
  let mx = -Infinity;
  for (let i = 0; i < n; i++) if (keep[i] && x[i] > mx) mx = x[i];
  let p = new Float64Array(n);
  let sum = 0;
  for (let i = 0; i < n; i++) { p[i] = keep[i] ? Math.exp(x[i] - mx) : 0; sum += p[i]; }
  for (let i = 0; i < n; i++) p[i] /= sum;
  if (topP != null && topP > 0 && topP < 1) {
    const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => (p[b] - p[a]) || (a - b));
    let cum = 0, m = n;
    for (let j = 0; j < n; j++) { cum += p[order[j]]; if (cum >= topP) { m = j + 1; break; } }
    const mask = new Uint8Array(n);
    for (let j = 0; j < Math.min(m, n); j++) mask[order[j]] = 1;
    sum = 0;
    for (let i = 0; i < n; i++) { if (!mask[i]) p[i] = 0; sum += p[i]; }
    for (let i = 0; i < n; i++) p[i] /= sum;
  }
  const cdf = new Float64Array(n);
  let c = 0;
  for (let i = 0; i < n; i++) { c += p[i]; cdf[i] = c; }
  const target = u * cdf[n - 1];
  let lo = 0, hi = n; // first index with cdf > target
  while (lo < hi) { const mid = (lo + hi) >> 1; if (cdf[mid] <= target) lo = mid + 1; else hi = mid; }
  return Math.min(lo, n - 1);
}
