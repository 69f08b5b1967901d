// Live loss plot on the Still-Moving training nodes: the trainer sends a
// "still_moving.loss" event per step; the node draws the curve under its widgets.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PLOT_HEIGHT = 90;

function drawPlot(node, ctx) {
  const pts = node.smLoss;
  if (!pts || pts.length < 2) return;
  const w = node.size[0] - 20, h = PLOT_HEIGHT, x0 = 10, y0 = node.size[1] - h - 10;
  const logs = pts.map((p) => Math.log10(Math.max(p.loss, 1e-8)));
  const lo = Math.min(...logs), hi = Math.max(...logs) + 1e-6;
  ctx.save();
  ctx.fillStyle = "#15181d";
  ctx.fillRect(x0, y0, w, h);
  const total = pts[pts.length - 1].total || pts[pts.length - 1].step;
  ctx.beginPath();
  ctx.strokeStyle = "#78c8ff";
  pts.forEach((p, i) => {
    const x = x0 + (w * p.step) / total;
    const y = y0 + h - (h * (logs[i] - lo)) / (hi - lo);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
  const last = pts[pts.length - 1];
  ctx.fillStyle = "#ddd";
  ctx.font = "11px sans-serif";
  ctx.fillText(`step ${last.step}/${last.total}  loss ${last.loss.toFixed(4)}`, x0 + 4, y0 + 12);
  ctx.restore();
}

app.registerExtension({
  name: "StillMoving.LossPlot",
  async setup() {
    api.addEventListener("still_moving.loss", ({ detail }) => {
      const node = app.graph.getNodeById(Number(detail.node));
      if (!node) return;
      if (!node.smLoss || detail.step === 1) node.smLoss = [];
      node.smLoss.push(detail);
      if (node.smLoss.length > 2000) node.smLoss.splice(0, node.smLoss.length - 2000);
      node.setDirtyCanvas(true, false);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.name.startsWith("SM_Train")) return;  // every trainer sends the event
    const onDraw = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDraw?.apply(this, arguments);
      if (this.smLoss?.length && this.size[1] < this.computeSize()[1] + PLOT_HEIGHT + 10) {
        this.size[1] = this.computeSize()[1] + PLOT_HEIGHT + 10;
      }
      drawPlot(this, ctx);
    };
  },
});
