#include "tiny_transformer/heads_view.hpp"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace tiny_transformer {

HeadRowStats head_row_stats(TinyTransformer& model, const Batch& batch) {
  // The fused kernel's streaming statistics: no (B, H, L, L) probabilities are formed.
  model.forward(batch.tokens, batch.B, batch.L, /*keep_weights=*/false, /*keep_head_stats=*/true);
  HeadRowStats s{model.config().layers, batch.B, model.config().heads, batch.L, {}};
  s.rows.resize(s.layers * s.B * s.H * s.L);
  for (int64_t layer = 0; layer < s.layers; ++layer) {
    const float* st = model.head_stats(layer).data_as<float>();  // (B, H, L, 3), same row order
    for (int64_t bhi = 0; bhi < s.B * s.H * s.L; ++bhi) {
      RowStat& r = s.rows[layer * s.B * s.H * s.L + bhi];
      r.entropy = st[bhi * 3 + 0];
      r.max_prob = st[bhi * 3 + 1];
      r.argmax = int64_t(st[bhi * 3 + 2]);
    }
  }
  return s;
}

std::vector<HeadSummary> summarize_heads(const HeadRowStats& stats, const Batch& batch) {
  std::vector<HeadSummary> heads;
  for (int64_t layer = 0; layer < stats.layers; ++layer)
    for (int64_t h = 0; h < stats.H; ++h) {
      HeadSummary s;
      s.layer = layer, s.head = h;
      double rows = 0, copy_rows = 0;
      for (int64_t b = 0; b < stats.B; ++b) {
        const int64_t period = batch.period[b];
        for (int64_t i = 1; i < stats.L; ++i) {
          const RowStat& r = stats.at(layer, b, h, i);
          rows += 1;
          s.entropy_bits += r.entropy / std::log(2.0);
          s.mean_distance += double(i - r.argmax);
          s.previous_token += r.argmax == i - 1;
          s.current_token += r.argmax == i;
          if (period > 0 && i >= stats.L / 2) {
            copy_rows += 1;
            s.induction += r.argmax <= i && (i + 1 - r.argmax) % period == 0;
          }
        }
      }
      s.entropy_bits /= rows, s.mean_distance /= rows, s.previous_token /= rows, s.current_token /= rows;
      s.induction = copy_rows > 0 ? s.induction / copy_rows : 0;
      // The clearest score above the bar names the role.
      const std::pair<double, const char*> scores[] = {
          {s.induction, "induction"}, {s.previous_token, "previous-token"}, {s.current_token, "current-token"}};
      const auto best = std::max_element(std::begin(scores), std::end(scores));
      s.role = best->first >= kClearScore ? best->second : "-";
      heads.push_back(s);
    }
  return heads;
}

std::string format_head_table(const std::vector<HeadSummary>& heads) {
  std::ostringstream out;
  char line[200];
  std::snprintf(line, sizeof line, "%5s %4s %14s %13s %10s %10s  %s\n", "layer", "head", "entropy(bits)",
                "mean dist", "prev-tok", "induction", "role");
  out << line;
  for (const HeadSummary& s : heads) {
    std::snprintf(line, sizeof line, "%5lld %4lld %14.2f %13.1f %10.2f %10.2f  %s\n", static_cast<long long>(s.layer),
                  static_cast<long long>(s.head), s.entropy_bits, s.mean_distance, s.previous_token, s.induction,
                  s.role.c_str());
    out << line;
  }
  return out.str();
}

int64_t count_role(const std::vector<HeadSummary>& heads, const std::string& role) {
  return std::count_if(heads.begin(), heads.end(), [&](const HeadSummary& s) { return s.role == role; });
}

AttentionPatterns attention_patterns(TinyTransformer& model, const Batch& batch, int64_t b) {
  AttentionPatterns p{model.config().layers, model.config().heads, batch.L, batch.period[b], {}, {}};
  p.tokens.assign(batch.tokens.begin() + b * batch.L, batch.tokens.begin() + (b + 1) * batch.L);
  model.forward(p.tokens, 1, batch.L, /*keep_weights=*/true);
  for (int64_t layer = 0; layer < p.layers; ++layer) {
    const float* w = model.attention_weights(layer).data_as<float>();  // (1, H, L, L)
    p.probs.insert(p.probs.end(), w, w + p.H * p.L * p.L);
  }
  return p;
}

namespace {

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '<') {
      out += "\\u003c";  // keeps "</script>" out of the inline script
      continue;
    }
    out += c;
  }
  return out;
}

std::string patterns_json(const AttentionPatterns& p, const std::vector<HeadSummary>& heads) {
  std::ostringstream j;
  j << "{\"layers\":" << p.layers << ",\"heads\":" << p.H << ",\"L\":" << p.L << ",\"period\":" << p.period
    << ",\"tokens\":[";
  for (int64_t i = 0; i < p.L; ++i) j << (i ? "," : "") << p.tokens[i];
  // Probabilities as integers 0..1000: a tenth of the size of full floats, plenty for colour.
  j << "],\"probs\":[";
  for (size_t k = 0; k < p.probs.size(); ++k) j << (k ? "," : "") << std::lround(p.probs[k] * 1000);
  j << "],\"summaries\":[";
  for (size_t k = 0; k < heads.size(); ++k) {
    const HeadSummary& s = heads[k];
    char buf[300];
    std::snprintf(buf, sizeof buf,
                  "%s{\"layer\":%lld,\"head\":%lld,\"entropy\":%.3f,\"distance\":%.2f,\"prev\":%.3f,"
                  "\"induction\":%.3f,\"role\":\"%s\"}",
                  k ? "," : "", static_cast<long long>(s.layer), static_cast<long long>(s.head), s.entropy_bits,
                  s.mean_distance, s.previous_token, s.induction, json_escape(s.role).c_str());
    j << buf;
  }
  j << "]}";
  return j.str();
}

constexpr const char* kHtmlHead = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>multihead demo: attention heads</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 20px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.tokens { display: flex; flex-wrap: wrap; gap: 2px; margin: 8px 0; }
.tok { font: 12px monospace; padding: 2px 3px; border: 1px solid #ccc; border-radius: 3px; cursor: default; min-width: 16px; text-align: center; }
.tok.query { outline: 2px solid #d33; }
.tok.repeat { border-color: #79a; }
.heads { display: flex; flex-wrap: wrap; gap: 16px; }
.head-panel { border: 1px solid #ddd; border-radius: 6px; padding: 8px; }
.head-panel h3 { font-size: 13px; margin: 0 0 6px; }
.head-panel .tokens { max-width: 320px; }
.head-panel .tok { font-size: 10px; min-width: 12px; padding: 1px; }
canvas { image-rendering: pixelated; border: 1px solid #eee; }
.grid { display: grid; gap: 8px; align-items: start; }
.model-cell { font-size: 11px; text-align: center; }
#status { font: 12px monospace; color: #666; }
</style></head><body>
<h1>multihead demo: what each attention head learned</h1>
<p>One held-out sequence (a random segment repeated with period <span id="period"></span>), seen by the
trained multi-head model. Rows are queries i, columns keys j (causal: j &le; i); darker = more weight.
Hover a token to see where every head looks from it.</p>
<div id="status">rendering</div>
<h2>Head view</h2>
<label>Layer <select id="layer"></select></label>
<div id="tokens" class="tokens"></div>
<div id="heads" class="heads"></div>
<h2>Model view (layers &times; heads)</h2>
<div id="model" class="grid"></div>
<script>
)HTML";

constexpr const char* kHtmlScript = R"JS(
"use strict";
const status = document.getElementById("status");
window.addEventListener("error", (e) => { status.textContent = "error: " + e.message; });
const L = DATA.L;
const prob = (layer, h, i, j) => DATA.probs[((layer * DATA.heads + h) * L + i) * L + j] / 1000;
const summary = (layer, h) => DATA.summaries.find((s) => s.layer === layer && s.head === h);
const colour = (p) => { const v = Math.round(255 * (1 - Math.sqrt(p))); return `rgb(${v},${Math.round(v * 0.9 + 20)},255)`; };

function heatmap(layer, h, scale, query) {
  const c = document.createElement("canvas");
  c.width = c.height = L * scale;
  const g = c.getContext("2d");
  for (let i = 0; i < L; ++i)
    for (let j = 0; j <= i; ++j) { g.fillStyle = colour(prob(layer, h, i, j)); g.fillRect(j * scale, i * scale, scale, scale); }
  if (query !== undefined) { g.strokeStyle = "#d33"; g.lineWidth = 1; g.strokeRect(0.5, query * scale + 0.5, L * scale - 1, scale - 1); }
  return c;
}

function tokenStrip(onHover) {
  const strip = document.createElement("div");
  strip.className = "tokens";
  DATA.tokens.forEach((t, i) => {
    const s = document.createElement("span");
    s.className = "tok" + (DATA.period > 0 && i >= DATA.period ? " repeat" : "");
    s.textContent = t;
    s.title = `position ${i}, token ${t}`;
    if (onHover) s.addEventListener("mouseenter", () => onHover(i));
    strip.appendChild(s);
  });
  return strip;
}

let layer = 0, query = L - 1;
function drawHeadView() {
  const heads = document.getElementById("heads");
  heads.replaceChildren();
  for (let h = 0; h < DATA.heads; ++h) {
    const s = summary(layer, h);
    const panel = document.createElement("div");
    panel.className = "head-panel";
    const title = document.createElement("h3");
    title.textContent = `head ${h}: ${s.role === "-" ? "no clear role" : s.role} ` +
      `(prev ${s.prev.toFixed(2)}, induction ${s.induction.toFixed(2)}, ${s.entropy.toFixed(2)} bits)`;
    panel.appendChild(title);
    panel.appendChild(heatmap(layer, h, 4, query));
    const strip = tokenStrip(null);
    strip.childNodes.forEach((el, j) => {
      const p = j <= query ? prob(layer, h, query, j) : 0;
      el.style.background = colour(p);
      if (j === query) el.classList.add("query");
    });
    panel.appendChild(strip);
    heads.appendChild(panel);
  }
  document.querySelectorAll("#tokens .tok").forEach((el, i) => el.classList.toggle("query", i === query));
}

function drawModelView() {
  const grid = document.getElementById("model");
  grid.style.gridTemplateColumns = `repeat(${DATA.heads}, max-content)`;
  for (let l = 0; l < DATA.layers; ++l)
    for (let h = 0; h < DATA.heads; ++h) {
      const cell = document.createElement("div");
      cell.className = "model-cell";
      cell.appendChild(heatmap(l, h, 2));
      const label = document.createElement("div");
      const role = summary(l, h).role;
      label.textContent = `L${l} H${h}` + (role === "-" ? "" : ` · ${role}`);
      cell.appendChild(label);
      cell.addEventListener("click", () => { layer = l; document.getElementById("layer").value = l; drawHeadView(); });
      grid.appendChild(cell);
    }
}

document.getElementById("period").textContent = DATA.period;
const picker = document.getElementById("layer");
for (let l = 0; l < DATA.layers; ++l) picker.add(new Option(`layer ${l}`, l));
picker.addEventListener("change", () => { layer = Number(picker.value); drawHeadView(); });
document.getElementById("tokens").replaceWith(Object.assign(tokenStrip((i) => { query = i; drawHeadView(); }), { id: "tokens" }));
drawHeadView();
drawModelView();
status.textContent = `ok: ${document.querySelectorAll(".head-panel").length} head panels, ` +
  `${document.querySelectorAll(".model-cell").length} model cells`;
</script></body></html>
)JS";

}  // namespace

void write_attention_html(const std::string& path, const AttentionPatterns& patterns,
                          const std::vector<HeadSummary>& heads) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << kHtmlHead << "const DATA = " << patterns_json(patterns, heads) << ";\n" << kHtmlScript;
  if (!out) throw std::runtime_error("write failed: " + path);
}

void write_heads_png(const std::string& path, const AttentionPatterns& p) {
  const int64_t scale = std::max<int64_t>(1, 192 / p.L), cell = p.L * scale, gap = 8;
  const int64_t width = p.H * cell + (p.H + 1) * gap, height = p.layers * cell + (p.layers + 1) * gap;
  std::vector<uint8_t> rgb(width * height * 3, 235);  // light grey background
  for (int64_t layer = 0; layer < p.layers; ++layer)
    for (int64_t h = 0; h < p.H; ++h) {
      const float* probs = p.probs.data() + (layer * p.H + h) * p.L * p.L;
      const int64_t x0 = gap + h * (cell + gap), y0 = gap + layer * (cell + gap);
      for (int64_t y = 0; y < cell; ++y)
        for (int64_t x = 0; x < cell; ++x) {
          const int64_t i = y / scale, j = x / scale;
          // sqrt spreads the small weights; white = 0, deep blue = 1 (same map as the page).
          const double v = 255 * (1 - std::sqrt(std::clamp<double>(probs[i * p.L + j], 0, 1)));
          uint8_t* px = rgb.data() + ((y0 + y) * width + x0 + x) * 3;
          px[0] = uint8_t(std::lround(v));
          px[1] = uint8_t(std::lround(v * 0.9 + 20));
          px[2] = 255;
        }
    }
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(width);
  image.height = png_uint_32(height);
  image.format = PNG_FORMAT_RGB;
  if (!png_image_write_to_file(&image, path.c_str(), 0, rgb.data(), 0, nullptr))
    throw std::runtime_error("cannot write " + path + ": " + image.message);
}

}  // namespace tiny_transformer
