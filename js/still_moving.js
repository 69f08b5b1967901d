// Still-Moving front-end extension: colours the pack's nodes so graphs read at a glance.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "StillMoving.NodeColours",
  nodeCreated(node) {
    if (node.comfyClass && node.comfyClass.startsWith("SM_")) {
      node.color = "#2a3d4f";
      node.bgcolor = "#1f2b38";
    }
  },
});
