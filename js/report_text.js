// Shows a Still-Moving node's text result (its {"ui": {"text": [...]}}) on the node itself, in a
// read-only box, as ComfyUI's own Preview Any does: the injection report's table, the Motion
// Adapter check and the Motion Adapter and Spatial Adapters trainers' checks.
import { app } from "../../scripts/app.js";

// node -> [height of the box in pixels, whether it may grow with the node]; the trainer's box
// stays small so the loss plot under it keeps its place
const TEXT_NODES = new Map([["SM_InjectionReport", [260, true]], ["SM_MotionAdapterCheck", [80, true]],
  ["SM_TrainMotionAdapter", [80, false]], ["SM_TrainSpatialAdapters", [80, false]]]);
const WIDGET = "sm_text_result";

function showText(node, text, [height, grows]) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.spellcheck = false;
    box.style.cssText = "width:100%;height:100%;font-family:monospace;font-size:11px;white-space:pre-wrap;" +
      "overflow:auto;background:#15181d;color:#ddd;border:none;resize:none;";
    widget = node.addDOMWidget(WIDGET, "textarea", box, {
      getValue: () => box.value,
      setValue: (v) => { box.value = v; },
      serialize: false,
      getMinHeight: () => height,  // room for the text without scrolling
      getMaxHeight: () => (grows ? 100000 : height),
    });
    widget.serialize = false;  // a result, not an input: never sent back with the prompt
    widget.box = box;
  }
  widget.box.value = text;
  const [w, h] = node.computeSize();
  node.setSize([Math.max(node.size[0], 560, w), Math.max(node.size[1], h + height)]);
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "StillMoving.TextResult",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      const text = message?.text;
      if (text?.length) showText(this, Array.isArray(text) ? text.join("\n") : String(text), TEXT_NODES.get(nodeData.name));
    };
  },
});
