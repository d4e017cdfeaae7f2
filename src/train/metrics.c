// metrics.csv (a row per step, flushed as it goes) and loss.svg (the loss curve, with
// evaluation points), both in the trainer's output directory.
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine/engine.h"
#include "io/file.h"
#include "io/json.h"
#include "train/checkpoint.h"

#define CSV_HEADER "step,epoch,loss,lr,grad_norm,tokens,tokens_per_s,elapsed_s,eval_loss\n"

typedef struct {
  int64_t step;
  float loss, eval_loss;
} point;

struct wk_metrics {
  FILE *f;   // opened at the first row
  int64_t start;
  char *path;
  point *pts;
  int64_t n, cap;
};

static int add_point(wk_metrics *m, int64_t step, float loss, float eval) {
  if (m->n == m->cap) {
    int64_t cap = m->cap ? 2 * m->cap : 256;
    point *p = realloc(m->pts, sizeof *p * (size_t)cap);
    if (!p) return 0;
    m->pts = p, m->cap = cap;
  }
  m->pts[m->n++] = (point){step, loss, eval};
  return 1;
}

// Keeps the rows of an earlier run up to `start` (a resume), rewriting the file.
static wk_status keep_rows(wk_metrics *m, int64_t start) {
  size_t len = 0;
  char *text = start > 0 ? wk_read_file(m->path, (size_t)1 << 30, &len) : NULL;
  wk_clear_error();
  wk_jbuf b = {0};
  wk_jbuf_puts(&b, CSV_HEADER);
  for (char *line = text; line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    char *end;
    long long step = strtoll(line, &end, 10);
    if (end != line && *end == ',' && step <= start) {
      // columns: step,epoch,loss,lr,grad_norm,tokens,tokens_per_s,elapsed_s,eval_loss
      char *c = end + 1;
      strtod(c, &c);
      float loss = (float)strtod(c + 1, NULL);
      const char *last = strrchr(line, ',');
      float eval = last && last[1] ? (float)strtod(last + 1, NULL) : NAN;
      add_point(m, step, loss, eval);
      wk_jbuf_printf(&b, "%s\n", line);
    }
    line = nl ? nl + 1 : NULL;
  }
  free(text);
  wk_status s = b.failed ? wk_error(WK_ERR_OOM, "%s: out of memory", m->path)
                         : wk_write_atomic(m->path, 1, (const void *[]){b.data}, (size_t[]){b.len});
  wk_jbuf_free(&b);
  return s;
}

wk_metrics *wk_metrics_open(const char *out_dir, int64_t start) {
  wk_metrics *m = calloc(1, sizeof *m);
  if (m) m->path = wk_path_join(out_dir, "metrics.csv");
  if (!m || !m->path) { free(m); wk_error(WK_ERR_OOM, "metrics: out of memory"); return NULL; }
  m->start = start;
  return m;
}

wk_status wk_metrics_add(wk_metrics *m, const wk_train_progress *p) {
  if (!m->f) {
    wk_status s = keep_rows(m, m->start);
    if (s) return s;
    if (!(m->f = fopen(m->path, "a"))) return wk_error(WK_ERR_IO, "%s: can't open for appending: %s", m->path, strerror(errno));
  }
  fprintf(m->f, "%lld,%lld,%.6f,%.6g,%.6g,%lld,%.1f,%.3f,", (long long)p->step, (long long)p->epoch, (double)p->loss,
          (double)p->lr, p->grad_norm, (long long)p->tokens, p->tokens_per_s, p->elapsed_s);
  if (!isnan(p->eval_loss)) fprintf(m->f, "%.6f", (double)p->eval_loss);
  fputc('\n', m->f);
  if (fflush(m->f)) return wk_error(WK_ERR_IO, "%s: write failed", m->path);
  if (!add_point(m, p->step, p->loss, p->eval_loss)) return wk_error(WK_ERR_OOM, "metrics: out of memory");
  return WK_OK;
}

// ---- loss.svg ----
static void svg_polyline(wk_jbuf *b, const wk_metrics *m, bool eval, double x0, double xs, double y0, double ys,
                         double lo, const char *color) {
  wk_jbuf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"", color, eval ? "2" : "1.5");
  for (int64_t i = 0; i < m->n; i++) {
    float v = eval ? m->pts[i].eval_loss : m->pts[i].loss;
    if (!isfinite(v)) continue;
    wk_jbuf_printf(b, "%.1f,%.1f ", x0 + xs * (double)m->pts[i].step, y0 - ys * ((double)v - lo));
  }
  wk_jbuf_puts(b, "\"/>\n");
}

static wk_status write_svg(const wk_metrics *m, const char *out_dir) {
  if (!m->n) return WK_OK;
  double lo = INFINITY, hi = -INFINITY;
  int64_t last = 1;
  bool any_eval = false;
  for (int64_t i = 0; i < m->n; i++) {
    float v[2] = {m->pts[i].loss, m->pts[i].eval_loss};
    for (int k = 0; k < 2; k++)
      if (isfinite(v[k])) lo = fmin(lo, v[k]), hi = fmax(hi, v[k]);
    any_eval |= isfinite(m->pts[i].eval_loss);
    if (m->pts[i].step > last) last = m->pts[i].step;
  }
  if (!isfinite(lo)) return WK_OK;
  if (hi - lo < 1e-6) hi = lo + 1;
  const double W = 640, H = 400, L = 60, R = 20, T = 30, B = 40;
  double xs = (W - L - R) / (double)last, ys = (H - T - B) / (hi - lo);
  wk_jbuf b = {0};
  wk_jbuf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
                 "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
  wk_jbuf_printf(&b, "<text x=\"%.0f\" y=\"18\">training loss%s</text>\n", L, any_eval ? " (blue) and eval loss (red)" : "");
  wk_jbuf_printf(&b, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, H - B, W - R, H - B);
  wk_jbuf_printf(&b, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n", L, T, L, H - B);
  for (int k = 0; k <= 4; k++) {
    double v = lo + (hi - lo) * k / 4, y = H - B - ys * (v - lo);
    wk_jbuf_printf(&b, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", L - 6, y + 4, v);
    double s = (double)last * k / 4;
    wk_jbuf_printf(&b, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f</text>\n", L + xs * s, H - B + 16, s);
  }
  wk_jbuf_printf(&b, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">step</text>\n", (L + W - R) / 2, H - 6);
  svg_polyline(&b, m, false, L, xs, H - B, ys, lo, "#1f77b4");
  if (any_eval) svg_polyline(&b, m, true, L, xs, H - B, ys, lo, "#d62728");
  wk_jbuf_puts(&b, "</svg>\n");
  char *path = wk_path_join(out_dir, "loss.svg");
  wk_status s = !path || b.failed ? wk_error(WK_ERR_OOM, "loss.svg: out of memory")
                                  : wk_write_atomic(path, 1, (const void *[]){b.data}, (size_t[]){b.len});
  free(path);
  wk_jbuf_free(&b);
  return s;
}

wk_status wk_metrics_close(wk_metrics *m, const char *out_dir) {
  if (!m) return WK_OK;
  wk_status s = m->f && fclose(m->f) ? wk_error(WK_ERR_IO, "%s: write failed", m->path) : WK_OK;
  if (!s && m->f) s = write_svg(m, out_dir);
  free(m->pts);
  free(m->path);
  free(m);
  return s;
}
